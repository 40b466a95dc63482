/**
 * Reader and writer for the safetensors format (https://github.com/huggingface/safetensors).
 *
 * File layout:
 *
 *     [ N: u64 little-endian ][ N bytes: UTF-8 JSON header ][ data section ]
 *
 * The header is a JSON object mapping tensor names to
 * `{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}`, plus an
 * optional `"__metadata__"` object of string -> string. Offsets are relative to
 * the start of the data section; tensor bytes are little-endian, row-major.
 *
 * Reading is strict: every rule is checked and any violation throws a
 * {@link FormatError} that names the file (when there is one) and the tensor.
 * In particular the data section must be covered exactly by the tensors,
 * contiguously, with no overlap, no hole and no trailing bytes, as the
 * reference implementation requires; duplicate keys (which `JSON.parse` would
 * silently collapse) and unknown keys in an entry are rejected.
 *
 * Writing is deterministic and matches the reference writer (the Rust
 * `safetensors` crate, used by the Python package) byte for byte when the
 * metadata has at most one key: tensors are ordered by dtype alignment,
 * largest first (in the reference's dtype order), then by name (UTF-8 byte
 * order), and laid out contiguously in that order; `"__metadata__"` comes
 * first with its keys sorted (the reference does not define their order);
 * the header is padded with spaces to a multiple of 8 bytes, so every tensor
 * starts aligned to its element size.
 */
import { open, type FileHandle } from 'node:fs/promises';

import { FormatError, RepAdapterError, ShapeError, expected } from '../errors.js';
import { writeFileAtomic } from './atomic.js';

// ---------------------------------------------------------------------------
// Dtypes
// ---------------------------------------------------------------------------

/**
 * Every dtype of the safetensors format. All are recognised and size-checked
 * when parsing; conversion ({@link toFloat32}, {@link toIntArray}) supports a
 * subset and rejects the rest with "unsupported dtype".
 */
export type DType =
  | 'F64'
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'I64'
  | 'I32'
  | 'I16'
  | 'I8'
  | 'U8'
  | 'BOOL'
  | 'U64'
  | 'U32'
  | 'U16'
  | 'F8_E4M3'
  | 'F8_E5M2'
  | 'F8_E8M0'
  | 'F8_E4M3FNUZ'
  | 'F8_E5M2FNUZ'
  | 'F6_E2M3'
  | 'F6_E3M2'
  | 'F4'
  | 'C64';

/** All dtypes, in the reference implementation's order (increasing alignment). */
export const DTYPES: readonly DType[] = Object.freeze([
  'BOOL',
  'F4',
  'F6_E2M3',
  'F6_E3M2',
  'U8',
  'I8',
  'F8_E5M2',
  'F8_E4M3',
  'F8_E8M0',
  'F8_E4M3FNUZ',
  'F8_E5M2FNUZ',
  'I16',
  'U16',
  'F16',
  'BF16',
  'I32',
  'U32',
  'F32',
  'C64',
  'F64',
  'I64',
  'U64',
] as const);

const DTYPE_BITS: Readonly<Record<DType, number>> = Object.freeze({
  BOOL: 8,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  F8_E4M3FNUZ: 8,
  F8_E5M2FNUZ: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  C64: 64,
  F64: 64,
  I64: 64,
  U64: 64,
});

const DTYPE_RANK: ReadonlyMap<string, number> = new Map(DTYPES.map((d, i) => [d, i]));

/** True when `x` is the name of a safetensors dtype. */
export function isDType(x: unknown): x is DType {
  return typeof x === 'string' && DTYPE_RANK.has(x);
}

/** Size of one element in bits (4 and 6 for the packed sub-byte float types). */
export function dtypeBits(dtype: DType): number {
  const bits = isDType(dtype) ? DTYPE_BITS[dtype] : undefined;
  if (bits === undefined) throw new FormatError(expected('a safetensors dtype', 'dtype', dtype));
  return bits;
}

/** Largest header the reader accepts, in bytes (the reference's limit). */
export const MAX_HEADER_SIZE = 100_000_000;

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/** One tensor of a parsed file. */
export interface TensorEntry {
  name: string;
  dtype: DType;
  shape: number[];
  /** View into the file buffer: exactly this tensor's bytes (little-endian). */
  data: Uint8Array;
}

/** Result of {@link parseSafetensors} / {@link readSafetensors}. */
export interface SafetensorsContents {
  /** Tensors in file (data offset) order. */
  tensors: Map<string, TensorEntry>;
  /** The `__metadata__` map; `{}` when the file has none. */
  metadata: Record<string, string>;
}

export type TypedArray =
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array;

/**
 * A tensor to write. Accepted `data` per dtype:
 *
 * | dtype        | data                                                        |
 * |--------------|-------------------------------------------------------------|
 * | F32          | Float32Array                                                |
 * | F64          | Float64Array                                                |
 * | F16, BF16    | Uint16Array (raw bit patterns) or Float32Array (rounded to nearest even) |
 * | I64 / U64    | BigInt64Array / BigUint64Array                              |
 * | I32 / U32    | Int32Array / Uint32Array                                    |
 * | I16 / U16    | Int16Array / Uint16Array                                    |
 * | I8 / U8, BOOL| Int8Array / Uint8Array, Uint8Array                          |
 * | any dtype    | Uint8Array of the exact little-endian bytes (e.g. a parsed {@link TensorEntry}) |
 *
 * A typed array must have exactly product(shape) elements; raw bytes exactly
 * product(shape) * bits / 8 bytes.
 */
export interface TensorInput {
  name: string;
  dtype: DType;
  shape: readonly number[];
  data: TypedArray;
}

/** A tensor given as the value of a Map keyed by name (a `name` field, if any, is ignored). */
export type TensorSpec = Omit<TensorInput, 'name'> & { name?: string };

/** What {@link serializeSafetensors} and {@link writeSafetensors} accept. */
export type TensorList = Iterable<TensorInput> | ReadonlyMap<string, TensorSpec>;

// ---------------------------------------------------------------------------
// Error helpers
// ---------------------------------------------------------------------------

const MAX_NAME_IN_MESSAGE = 200;

function q(name: string): string {
  const s = name.length > MAX_NAME_IN_MESSAGE ? `${name.slice(0, MAX_NAME_IN_MESSAGE)}…` : name;
  return JSON.stringify(s);
}

function fail(file: string | undefined, message: string, tensor?: string, cause?: unknown): never {
  const where = file !== undefined ? `invalid safetensors file ${file}` : 'invalid safetensors data';
  const what = tensor !== undefined ? `tensor ${q(tensor)}: ${message}` : message;
  throw new FormatError(`${where}: ${what}`, {
    ...(file !== undefined ? { file } : {}),
    ...(tensor !== undefined ? { tensor } : {}),
    ...(cause !== undefined ? { cause } : {}),
  });
}

function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

// ---------------------------------------------------------------------------
// Strict JSON parser (detects duplicate keys, keeps number literals verbatim)
// ---------------------------------------------------------------------------

class JNum {
  constructor(readonly raw: string) {}
}
class JObject {
  readonly map = new Map<string, JValue>();
}
type JValue = null | boolean | string | JNum | JValue[] | JObject;

class JsonSyntaxError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(message);
  }
}
class JsonDuplicateKeyError extends Error {
  constructor(
    readonly key: string,
    readonly path: readonly string[],
  ) {
    super(`duplicate key ${JSON.stringify(key)}`);
  }
}

const MAX_JSON_DEPTH = 128;
const NUMBER_RE = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const HEX4_RE = /^[0-9a-fA-F]{4}$/;

/** RFC 8259 JSON parser. Objects keep key order and reject duplicate keys. */
class JsonParser {
  private pos = 0;
  private depth = 0;
  private readonly path: string[] = [];

  constructor(private readonly s: string) {}

  parseDocument(): JValue {
    this.ws();
    const v = this.value();
    this.ws();
    if (this.pos !== this.s.length) this.err('unexpected data after the JSON value');
    return v;
  }

  private err(message: string, at = this.pos): never {
    throw new JsonSyntaxError(message, at);
  }

  private ws(): void {
    const s = this.s;
    let p = this.pos;
    for (;;) {
      const c = s.charCodeAt(p);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) p++;
      else break;
    }
    this.pos = p;
  }

  private value(): JValue {
    const s = this.s;
    const c = s.charCodeAt(this.pos);
    switch (c) {
      case 0x7b /* { */:
        return this.object();
      case 0x5b /* [ */:
        return this.array();
      case 0x22 /* " */:
        return this.string();
      case 0x74 /* t */:
        return this.literal('true', true);
      case 0x66 /* f */:
        return this.literal('false', false);
      case 0x6e /* n */:
        return this.literal('null', null);
      default:
        if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
        if (Number.isNaN(c)) this.err('unexpected end of header');
        this.err(`unexpected character ${JSON.stringify(s[this.pos])}`);
    }
  }

  private literal<T extends JValue>(word: string, v: T): T {
    if (!this.s.startsWith(word, this.pos)) this.err('invalid literal');
    this.pos += word.length;
    return v;
  }

  private number(): JNum {
    NUMBER_RE.lastIndex = this.pos;
    const m = NUMBER_RE.exec(this.s);
    if (!m) this.err('invalid number');
    this.pos += m[0].length;
    return new JNum(m[0]);
  }

  private enter(): void {
    if (++this.depth > MAX_JSON_DEPTH) this.err(`nesting deeper than ${MAX_JSON_DEPTH} levels`);
  }

  /** At a container's start: true when it is empty (its closing bracket consumed). */
  private empty(close: number): boolean {
    this.pos++; // the opening bracket
    this.ws();
    if (this.s.charCodeAt(this.pos) !== close) return false;
    this.pos++;
    this.depth--;
    return true;
  }

  /** After a member: true at ',' (another member follows), false at the closing bracket. */
  private more(close: number): boolean {
    this.ws();
    const c = this.s.charCodeAt(this.pos);
    if (c === 0x2c) {
      this.pos++;
      this.ws();
      return true;
    }
    if (c === close) {
      this.pos++;
      this.depth--;
      return false;
    }
    return this.err(Number.isNaN(c) ? 'unexpected end of header' : `expected ',' or '${String.fromCharCode(close)}'`);
  }

  private object(): JObject {
    this.enter();
    const obj = new JObject();
    if (this.empty(0x7d)) return obj;
    for (;;) {
      if (this.s.charCodeAt(this.pos) !== 0x22) this.err('expected a string key');
      const key = this.string();
      if (obj.map.has(key)) {
        throw new JsonDuplicateKeyError(key, [...this.path]);
      }
      this.ws();
      if (this.s.charCodeAt(this.pos) !== 0x3a) this.err("expected ':' after key");
      this.pos++;
      this.ws();
      this.path.push(key);
      obj.map.set(key, this.value());
      this.path.pop();
      if (!this.more(0x7d)) return obj;
    }
  }

  private array(): JValue[] {
    this.enter();
    const arr: JValue[] = [];
    if (this.empty(0x5d)) return arr;
    for (;;) {
      this.path.push(`[${arr.length}]`);
      arr.push(this.value());
      this.path.pop();
      if (!this.more(0x5d)) return arr;
    }
  }

  private string(): string {
    const s = this.s;
    const start = this.pos;
    let p = start + 1;
    let chunk = p;
    let out = '';
    for (;;) {
      if (p >= s.length) this.err('unterminated string', start);
      const c = s.charCodeAt(p);
      if (c === 0x22) {
        out += s.slice(chunk, p);
        this.pos = p + 1;
        return out;
      }
      if (c === 0x5c) {
        out += s.slice(chunk, p);
        const e = s[p + 1];
        p += 2;
        switch (e) {
          case '"':
            out += '"';
            break;
          case '\\':
            out += '\\';
            break;
          case '/':
            out += '/';
            break;
          case 'b':
            out += '\b';
            break;
          case 'f':
            out += '\f';
            break;
          case 'n':
            out += '\n';
            break;
          case 'r':
            out += '\r';
            break;
          case 't':
            out += '\t';
            break;
          case 'u': {
            const u = this.hex4(p);
            p += 4;
            if (u >= 0xd800 && u <= 0xdbff) {
              if (s[p] !== '\\' || s[p + 1] !== 'u') this.err('lone surrogate in \\u escape', p - 6);
              const lo = this.hex4(p + 2);
              if (lo < 0xdc00 || lo > 0xdfff) this.err('lone surrogate in \\u escape', p - 6);
              out += String.fromCharCode(u, lo);
              p += 6;
            } else if (u >= 0xdc00 && u <= 0xdfff) {
              this.err('lone surrogate in \\u escape', p - 6);
            } else {
              out += String.fromCharCode(u);
            }
            break;
          }
          default:
            this.err('invalid escape in string', p - 2);
        }
        chunk = p;
      } else if (c < 0x20) {
        this.err('unescaped control character in string', p);
      } else {
        p++;
      }
    }
  }

  private hex4(at: number): number {
    const h = this.s.slice(at, at + 4);
    if (!HEX4_RE.test(h)) this.err('invalid \\u escape', at - 2);
    return parseInt(h, 16);
  }
}

/** Compact rendering of a parsed JSON value for messages. */
function preview(v: JValue | undefined, depth = 0): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (typeof v === 'boolean') return String(v);
  if (typeof v === 'string') return v.length > 40 ? `${JSON.stringify(v.slice(0, 40))}…` : JSON.stringify(v);
  if (v instanceof JNum) return v.raw.length > 40 ? `${v.raw.slice(0, 40)}…` : v.raw;
  if (Array.isArray(v)) {
    if (depth > 0) return `[…${v.length} items]`;
    const items = v.slice(0, 6).map((x) => preview(x, depth + 1));
    if (v.length > 6) items.push(`… (${v.length} items)`);
    return `[${items.join(', ')}]`;
  }
  if (depth > 0) return '{…}';
  const keys = [...v.map.keys()];
  const shown = keys.slice(0, 4).map((k) => `${q(k)}: ${preview(v.map.get(k), depth + 1)}`);
  if (keys.length > 4) shown.push(`… (${keys.length} keys)`);
  return `{${shown.join(', ')}}`;
}

function kind(v: JValue): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (v instanceof JObject) return 'an object';
  if (v instanceof JNum) return 'a number';
  return `a ${typeof v}`;
}

/** A non-negative safe integer written as a plain integer literal, or a reason it is not. */
function asIndex(v: JValue | undefined): number | string {
  if (!(v instanceof JNum)) return `got ${preview(v)}`;
  const raw = v.raw;
  if (raw.startsWith('-')) return `got ${preview(v)} (negative)`;
  if (!/^[0-9]+$/.test(raw)) return `got ${preview(v)} (not an integer)`;
  const n = Number(raw);
  if (!Number.isSafeInteger(n)) return `got ${preview(v)} (too large)`;
  return n;
}

// ---------------------------------------------------------------------------
// Header validation
// ---------------------------------------------------------------------------

interface LayoutEntry {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

interface Layout {
  /** Byte offset of the data section in the file (8 + header length). */
  dataStart: number;
  /** Entries sorted by data offset. */
  entries: LayoutEntry[];
  metadata: Record<string, string>;
}

const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const utf8Encoder = new TextEncoder();

/** Validates the 8-byte prefix; returns the header length N. */
function headerLength(prefix: Uint8Array, fileSize: number, file: string | undefined): number {
  if (fileSize < 8) {
    fail(file, `file is ${fileSize} bytes, shorter than the 8-byte header length prefix`);
  }
  const big = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (big > BigInt(MAX_HEADER_SIZE)) {
    fail(file, `header length ${big} is larger than the ${MAX_HEADER_SIZE}-byte limit`);
  }
  const n = Number(big);
  if (8 + n > fileSize) {
    fail(
      file,
      `header length ${n} runs past the end of the file (only ${fileSize - 8} bytes follow the 8-byte prefix; truncated?)`,
    );
  }
  return n;
}

const ENTRY_KEYS = ['dtype', 'shape', 'data_offsets'] as const;

/** Parses and validates the JSON header against a data section of `dataLen` bytes. */
function parseHeader(headerBytes: Uint8Array, dataStart: number, dataLen: number, file: string | undefined): Layout {
  if (headerBytes.length === 0 || headerBytes[0] !== 0x7b) {
    const first = headerBytes.length === 0 ? 'an empty header' : `byte 0x${headerBytes[0]!.toString(16).padStart(2, '0')}`;
    fail(file, `header must be a JSON object starting with '{', got ${first}`);
  }
  let text: string;
  try {
    text = utf8Decoder.decode(headerBytes);
  } catch (e) {
    fail(file, 'header is not valid UTF-8', undefined, e);
  }

  let root: JValue;
  try {
    root = new JsonParser(text).parseDocument();
  } catch (e) {
    if (e instanceof JsonDuplicateKeyError) {
      const [top, ...rest] = e.path;
      if (top === undefined) {
        if (e.key === '__metadata__') fail(file, 'duplicate "__metadata__" key in header');
        fail(file, `duplicate tensor name ${q(e.key)} in header`, e.key);
      }
      if (top === '__metadata__' && rest.length === 0) fail(file, `duplicate key ${q(e.key)} in "__metadata__"`);
      if (rest.length === 0) fail(file, `duplicate key ${q(e.key)} in its entry`, top);
      fail(file, `duplicate key ${q(e.key)} inside ${rest.join('.')}`, top);
    }
    if (e instanceof JsonSyntaxError) {
      fail(file, `header is not valid JSON: ${e.message} at header offset ${e.offset}`, undefined, e);
    }
    throw e;
  }
  if (!(root instanceof JObject)) fail(file, `header must be a JSON object, got ${kind(root)}`);

  const metadata: Record<string, string> = {};
  const entries: LayoutEntry[] = [];
  for (const [name, v] of root.map) {
    if (name === '__metadata__') {
      if (!(v instanceof JObject)) {
        fail(file, `"__metadata__" must be an object of string values, got ${preview(v)}`);
      }
      for (const [k, mv] of v.map) {
        if (typeof mv !== 'string') {
          fail(file, `"__metadata__" value for key ${q(k)} must be a string, got ${preview(mv)}`);
        }
        // defineProperty: a "__proto__" key must become an own property, not change the prototype.
        Object.defineProperty(metadata, k, { value: mv, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    entries.push(parseEntry(name, v, dataLen, file));
  }

  // The data section must be covered exactly: sort by offsets, then walk.
  const sorted = entries
    .map((e, i) => ({ e, i }))
    .sort((a, b) => a.e.begin - b.e.begin || a.e.end - b.e.end || a.i - b.i)
    .map((x) => x.e);
  let cursor = 0;
  let prev: LayoutEntry | undefined;
  for (const t of sorted) {
    if (t.begin < cursor && prev) {
      fail(
        file,
        `data_offsets [${t.begin}, ${t.end}] overlap tensor ${q(prev.name)} (data_offsets [${prev.begin}, ${prev.end}])`,
        t.name,
      );
    }
    if (t.begin > cursor) {
      fail(
        file,
        `hole in the data section: bytes [${cursor}, ${t.begin}) before this tensor are not covered by any tensor`,
        t.name,
      );
    }
    cursor = t.end;
    prev = t;
  }
  if (cursor !== dataLen) {
    fail(
      file,
      `the data section has ${dataLen - cursor} trailing bytes [${cursor}, ${dataLen}) not covered by any tensor` +
        ` (data section starts at byte ${dataStart})`,
    );
  }
  return { dataStart, entries: sorted, metadata };
}

function parseEntry(name: string, v: JValue, dataLen: number, file: string | undefined): LayoutEntry {
  if (!(v instanceof JObject)) {
    fail(file, `entry must be an object with "dtype", "shape" and "data_offsets", got ${preview(v)}`, name);
  }
  for (const k of v.map.keys()) {
    if (!(ENTRY_KEYS as readonly string[]).includes(k)) {
      fail(file, `unknown key ${q(k)} in entry (allowed: "dtype", "shape", "data_offsets")`, name);
    }
  }
  for (const k of ENTRY_KEYS) if (!v.map.has(k)) fail(file, `entry is missing "${k}"`, name);

  const dt = v.map.get('dtype')!;
  if (typeof dt !== 'string') fail(file, `dtype must be a string, got ${preview(dt)}`, name);
  if (!isDType(dt)) fail(file, `unknown dtype ${q(dt)} (known: ${DTYPES.join(', ')})`, name);
  const dtype = dt;

  const sh = v.map.get('shape')!;
  if (!Array.isArray(sh)) fail(file, `shape must be an array of non-negative integers, got ${preview(sh)}`, name);
  const shape: number[] = [];
  for (let i = 0; i < sh.length; i++) {
    const d = asIndex(sh[i]);
    if (typeof d === 'string') fail(file, `shape[${i}] must be a non-negative integer, ${d}`, name);
    shape.push(d);
  }

  const off = v.map.get('data_offsets')!;
  if (!Array.isArray(off) || off.length !== 2) {
    fail(file, `data_offsets must be a pair [begin, end] of non-negative integers, got ${preview(off)}`, name);
  }
  const begin = asIndex(off[0]);
  if (typeof begin === 'string') fail(file, `data_offsets[0] (begin) must be a non-negative integer, ${begin}`, name);
  const end = asIndex(off[1]);
  if (typeof end === 'string') fail(file, `data_offsets[1] (end) must be a non-negative integer, ${end}`, name);
  if (begin > end) fail(file, `data_offsets [${begin}, ${end}] are reversed (begin > end)`, name);

  const nbytes = byteSize(dtype, shape, (msg) => fail(file, msg, name));
  if (end - begin !== nbytes) {
    fail(
      file,
      `byte length mismatch: data_offsets [${begin}, ${end}] span ${end - begin} bytes, but dtype ${dtype} ` +
        `with shape ${fmtShape(shape)} needs ${nbytes} bytes`,
      name,
    );
  }
  if (end > dataLen) {
    fail(
      file,
      `data_offsets [${begin}, ${end}] are out of range: the data section is only ${dataLen} bytes (truncated file?)`,
      name,
    );
  }
  return { name, dtype, shape, begin, end };
}

/** Byte size of a tensor; `onError` receives overflow / partial-byte problems. */
function byteSize(dtype: DType, shape: readonly number[], onError: (msg: string) => never): number {
  let n = 1;
  if (!shape.includes(0)) {
    for (const d of shape) {
      n *= d;
      if (!Number.isSafeInteger(n)) onError(`shape ${fmtShape(shape)} has too many elements`);
    }
  } else {
    n = 0;
  }
  const bits = n * DTYPE_BITS[dtype];
  if (!Number.isSafeInteger(bits)) onError(`shape ${fmtShape(shape)} has too many elements for dtype ${dtype}`);
  if (bits % 8 !== 0) {
    onError(`dtype ${dtype} with shape ${fmtShape(shape)} is ${bits} bits, not a whole number of bytes`);
  }
  return bits / 8;
}

function build(bytes: Uint8Array, layout: Layout): SafetensorsContents {
  const tensors = new Map<string, TensorEntry>();
  const base = layout.dataStart;
  for (const e of layout.entries) {
    tensors.set(e.name, {
      name: e.name,
      dtype: e.dtype,
      shape: e.shape,
      data: bytes.subarray(base + e.begin, base + e.end),
    });
  }
  return { tensors, metadata: layout.metadata };
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/**
 * Parses a complete safetensors file held in memory. Tensor data are views
 * into `bytes` (no copy). Throws {@link FormatError} on any violation of the
 * format; `file` is only used in error messages.
 */
export function parseSafetensors(bytes: Uint8Array, file?: string): SafetensorsContents {
  if (!(bytes instanceof Uint8Array)) {
    throw new FormatError(expected('a Uint8Array', 'bytes', bytes), file !== undefined ? { file } : undefined);
  }
  // Plain Uint8Array views, even when given a Buffer.
  const u8 = Object.getPrototypeOf(bytes) === Uint8Array.prototype
    ? bytes
    : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = headerLength(u8, u8.length, file);
  const layout = parseHeader(u8.subarray(8, 8 + n), 8 + n, u8.length - 8 - n, file);
  return build(u8, layout);
}

const READ_CHUNK = 1 << 30;

/** Reads file bytes [from + shift, to + shift) into buf[from, to). */
async function readInto(
  fh: FileHandle,
  buf: Uint8Array,
  from: number,
  to: number,
  file: string,
  shift = 0,
): Promise<void> {
  let off = from;
  while (off < to) {
    const { bytesRead } = await fh.read(buf, off, Math.min(to - off, READ_CHUNK), off + shift);
    if (bytesRead === 0) fail(file, `file shrank while being read (ended at byte ${off + shift})`);
    off += bytesRead;
  }
}

/**
 * Reads and parses a safetensors file. The header is validated before the
 * data section is read, so a malformed file fails fast. Errors name the file.
 */
export async function readSafetensors(path: string): Promise<SafetensorsContents> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const prefix = new Uint8Array(8);
    if (size >= 8) await readInto(fh, prefix, 0, 8, path);
    const n = headerLength(prefix, size, path);
    const header = new Uint8Array(n);
    await readInto(fh, header, 0, n, path, 8);
    // Validate the whole header before reading (or allocating for) the data.
    const layout = parseHeader(header, 8 + n, size - 8 - n, path);
    let bytes: Uint8Array;
    try {
      bytes = new Uint8Array(size);
    } catch (e) {
      throw new RepAdapterError(`cannot load ${path}: ${size} bytes do not fit in one buffer`, { cause: e });
    }
    bytes.set(prefix, 0);
    bytes.set(header, 8);
    await readInto(fh, bytes, 8 + n, size, path);
    return build(bytes, layout);
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------
// Conversion
// ---------------------------------------------------------------------------

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function swapBytes(b: Uint8Array, size: number): void {
  for (let i = 0; i + size <= b.length; i += size) {
    for (let j = 0, k = size - 1; j < k; j++, k--) {
      const t = b[i + j]!;
      b[i + j] = b[i + k]!;
      b[i + k] = t;
    }
  }
}

/** The bytes in host order and aligned to `size`: the view itself when possible, else a copy. */
function hostBytes(data: Uint8Array, size: number): { bytes: Uint8Array; copied: boolean } {
  if (size === 1 || (LITTLE_ENDIAN && data.byteOffset % size === 0)) return { bytes: data, copied: false };
  const copy = new Uint8Array(data); // always a fresh, offset-0 buffer (unlike Buffer#slice)
  if (!LITTLE_ENDIAN) swapBytes(copy, size);
  return { bytes: copy, copied: true };
}

function view<T>(ctor: new (b: ArrayBufferLike, o: number, n: number) => T, data: Uint8Array, size: number): T {
  const { bytes } = hostBytes(data, size);
  return new ctor(bytes.buffer, bytes.byteOffset, bytes.byteLength / size);
}

function checkEntry(entry: TensorEntry, fn: string): number {
  if (typeof entry !== 'object' || entry === null) throw new FormatError(expected('a tensor entry', fn, entry));
  const name = typeof entry.name === 'string' ? `tensor ${q(entry.name)}` : 'tensor';
  if (!isDType(entry.dtype)) throw new FormatError(expected('a safetensors dtype', `${name} dtype`, entry.dtype));
  const shape = checkShape(entry.shape, `${name} shape`);
  if (!(entry.data instanceof Uint8Array)) {
    throw new FormatError(expected('a Uint8Array of raw bytes', `${name} data`, entry.data));
  }
  const nbytes = byteSize(entry.dtype, shape, (msg) => {
    throw new ShapeError(`${name}: ${msg}`);
  });
  if (entry.data.byteLength !== nbytes) {
    throw new ShapeError(
      expected(`${nbytes} bytes (dtype ${entry.dtype}, shape ${fmtShape(shape)})`, `${name} data`, entry.data),
    );
  }
  return (nbytes * 8) / DTYPE_BITS[entry.dtype];
}

function unsupported(entry: TensorEntry, fn: string, supported: string): never {
  throw new FormatError(
    `unsupported dtype ${entry.dtype} for ${fn} (tensor ${q(entry.name)}); supported: ${supported}`,
    { tensor: entry.name },
  );
}

let F16_TABLE: Float32Array | undefined;
function f16Table(): Float32Array {
  if (!F16_TABLE) {
    F16_TABLE = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) F16_TABLE[h] = decodeMinifloat(h, 16, 5, 10, 15, 'ieee');
  }
  return F16_TABLE;
}

const F8_TABLES = new Map<DType, Float32Array>();
function f8Table(dtype: DType): Float32Array {
  let t = F8_TABLES.get(dtype);
  if (!t) {
    t = new Float32Array(256);
    for (let b = 0; b < 256; b++) {
      switch (dtype) {
        case 'F8_E4M3': // OCP E4M3FN: bias 7, no infinities, S.1111.111 is NaN
          t[b] = decodeMinifloat(b, 8, 4, 3, 7, 'fn');
          break;
        case 'F8_E5M2': // IEEE-like: bias 15, infinities and NaNs
          t[b] = decodeMinifloat(b, 8, 5, 2, 15, 'ieee');
          break;
        case 'F8_E4M3FNUZ': // bias 8, no infinities, no -0: 0x80 is NaN
          t[b] = decodeMinifloat(b, 8, 4, 3, 8, 'fnuz');
          break;
        case 'F8_E5M2FNUZ': // bias 16, no infinities, no -0: 0x80 is NaN
          t[b] = decodeMinifloat(b, 8, 5, 2, 16, 'fnuz');
          break;
        case 'F8_E8M0': // unsigned exponent only: 2^(b-127), 0xFF is NaN
          t[b] = b === 0xff ? NaN : 2 ** (b - 127);
          break;
        default:
          throw new Error(`no float8 table for ${dtype}`);
      }
    }
    F8_TABLES.set(dtype, t);
  }
  return t;
}

/** Decodes a sign/exponent/mantissa float of `width` bits. */
function decodeMinifloat(
  bits: number,
  width: number,
  expBits: number,
  manBits: number,
  bias: number,
  mode: 'ieee' | 'fn' | 'fnuz',
): number {
  const signBit = 1 << (width - 1);
  const expMax = (1 << expBits) - 1;
  const manMax = (1 << manBits) - 1;
  const negative = (bits & signBit) !== 0;
  const e = (bits >> manBits) & expMax;
  const m = bits & manMax;
  if (mode === 'fnuz' && bits === signBit) return NaN;
  if (mode === 'ieee' && e === expMax) return m === 0 ? (negative ? -Infinity : Infinity) : NaN;
  if (mode === 'fn' && e === expMax && m === manMax) return NaN;
  const mag = e === 0 ? m * 2 ** (1 - bias - manBits) : (1 + m / 2 ** manBits) * 2 ** (e - bias);
  return negative ? -mag : mag;
}

const FLOAT32_DTYPES =
  'F32, F64, F16, BF16, F8_E4M3, F8_E5M2, F8_E4M3FNUZ, F8_E5M2FNUZ, F8_E8M0, I64, I32, I16, I8, U64, U32, U16, U8, BOOL';

/**
 * Converts a tensor to a new Float32Array (never a view into the file; works
 * for any byte offset). F64 and large integers are rounded to nearest float32;
 * BOOL becomes 0/1. F4, F6_* and C64 throw "unsupported dtype".
 */
export function toFloat32(entry: TensorEntry): Float32Array {
  const n = checkEntry(entry, 'toFloat32');
  const data = entry.data;
  const out = new Float32Array(n);
  switch (entry.dtype) {
    case 'F32': {
      const { bytes, copied } = hostBytes(data, 4);
      const f = new Float32Array(bytes.buffer, bytes.byteOffset, n);
      if (copied) return f;
      out.set(f);
      return out;
    }
    case 'F64':
      out.set(view(Float64Array, data, 8));
      return out;
    case 'F16': {
      const h = view(Uint16Array, data, 2);
      const table = f16Table();
      for (let i = 0; i < n; i++) out[i] = table[h[i]!]!;
      return out;
    }
    case 'BF16': {
      const h = view(Uint16Array, data, 2);
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = h[i]! << 16;
      return out;
    }
    case 'F8_E4M3':
    case 'F8_E5M2':
    case 'F8_E4M3FNUZ':
    case 'F8_E5M2FNUZ':
    case 'F8_E8M0': {
      const table = f8Table(entry.dtype);
      for (let i = 0; i < n; i++) out[i] = table[data[i]!]!;
      return out;
    }
    case 'U8':
      out.set(data);
      return out;
    case 'I8':
      out.set(new Int8Array(data.buffer, data.byteOffset, n));
      return out;
    case 'I16':
      out.set(view(Int16Array, data, 2));
      return out;
    case 'U16':
      out.set(view(Uint16Array, data, 2));
      return out;
    case 'I32':
      out.set(view(Int32Array, data, 4));
      return out;
    case 'U32':
      out.set(view(Uint32Array, data, 4));
      return out;
    case 'I64': {
      const b = view(BigInt64Array, data, 8);
      for (let i = 0; i < n; i++) out[i] = Number(b[i]!);
      return out;
    }
    case 'U64': {
      const b = view(BigUint64Array, data, 8);
      for (let i = 0; i < n; i++) out[i] = Number(b[i]!);
      return out;
    }
    case 'BOOL':
      for (let i = 0; i < n; i++) out[i] = data[i] ? 1 : 0;
      return out;
    default:
      return unsupported(entry, 'toFloat32', FLOAT32_DTYPES);
  }
}

const INT_DTYPES = 'I64, I32, I16, I8, U64, U32, U16, U8, BOOL';

/**
 * Converts an integer (or BOOL) tensor, e.g. class labels, to a new
 * Int32Array. Throws {@link FormatError} when a value does not fit in int32
 * and "unsupported dtype" for float dtypes.
 */
export function toIntArray(entry: TensorEntry): Int32Array {
  const n = checkEntry(entry, 'toIntArray');
  const data = entry.data;
  const out = new Int32Array(n);
  const range = (i: number, v: number | bigint): never => {
    throw new FormatError(
      `tensor ${q(entry.name)}: value ${v} at index ${i} does not fit in int32 (dtype ${entry.dtype})`,
      { tensor: entry.name },
    );
  };
  switch (entry.dtype) {
    case 'I32':
      out.set(view(Int32Array, data, 4));
      return out;
    case 'I16':
      out.set(view(Int16Array, data, 2));
      return out;
    case 'U16':
      out.set(view(Uint16Array, data, 2));
      return out;
    case 'I8':
      out.set(new Int8Array(data.buffer, data.byteOffset, n));
      return out;
    case 'U8':
      out.set(data);
      return out;
    case 'BOOL':
      for (let i = 0; i < n; i++) out[i] = data[i] ? 1 : 0;
      return out;
    case 'U32': {
      const u = view(Uint32Array, data, 4);
      for (let i = 0; i < n; i++) {
        const v = u[i]!;
        if (v > 0x7fffffff) range(i, v);
        out[i] = v;
      }
      return out;
    }
    case 'I64':
    case 'U64': {
      const b = entry.dtype === 'I64' ? view(BigInt64Array, data, 8) : view(BigUint64Array, data, 8);
      for (let i = 0; i < n; i++) {
        const v = b[i]!;
        if (v > 2147483647n || v < -2147483648n) range(i, v);
        out[i] = Number(v);
      }
      return out;
    }
    default:
      return unsupported(entry, 'toIntArray', INT_DTYPES);
  }
}

// ---------------------------------------------------------------------------
// Float narrowing (round to nearest, ties to even)
// ---------------------------------------------------------------------------

function f32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00; // overflow -> infinity
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal -> zero
    const m = mant | 0x800000;
    const shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1) !== 0)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++; // may carry into the exponent: correct
  return sign | h;
}

function f32BitsToBF16(x: number): number {
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff; // NaN stays a quiet NaN
  // For non-NaN x the sum stays below 2^32, so >>> 16 is exact.
  return (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
}

function narrow(src: Float32Array, to: 'F16' | 'BF16'): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  // Separate monomorphic loops so the converter is inlined.
  if (to === 'F16') for (let i = 0; i < bits.length; i++) out[i] = f32BitsToF16(bits[i]!);
  else for (let i = 0; i < bits.length; i++) out[i] = f32BitsToBF16(bits[i]!);
  return out;
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

const TYPED_FOR: Partial<Record<DType, readonly string[]>> = {
  F64: ['Float64Array'],
  F32: ['Float32Array'],
  F16: ['Uint16Array', 'Float32Array'],
  BF16: ['Uint16Array', 'Float32Array'],
  I64: ['BigInt64Array'],
  U64: ['BigUint64Array'],
  I32: ['Int32Array'],
  U32: ['Uint32Array'],
  I16: ['Int16Array'],
  U16: ['Uint16Array'],
  I8: ['Int8Array'],
  U8: ['Uint8Array'],
  BOOL: ['Uint8Array'],
};

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function typedTag(x: unknown): string | undefined {
  if (!ArrayBuffer.isView(x) || x instanceof DataView) return undefined;
  return (x as unknown as { [Symbol.toStringTag]: string })[Symbol.toStringTag];
}

function checkShape(shape: unknown, what: string): number[] {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
    throw new ShapeError(expected('an array of non-negative integers', what, shape));
  }
  return shape as number[];
}

interface PlannedTensor {
  name: string;
  nameKey: string; // code-point-ordered key for sorting
  dtype: DType;
  shape: number[];
  nbytes: number;
  bytes: () => Uint8Array;
}

interface Plan {
  /** 8-byte length prefix followed by the padded JSON header. */
  head: Uint8Array;
  tensors: PlannedTensor[];
  dataLength: number;
}

/** Maps UTF-16 code units so that string comparison follows code point (= UTF-8 byte) order. */
function codePointKey(s: string): string {
  if (!/[\uD800-\uFFFF]/.test(s)) return s;
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out += String.fromCharCode(c >= 0xe000 ? c - 0x800 : c >= 0xd800 ? c + 0x2000 : c);
  }
  return out;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function planTensor(name: unknown, t: TensorSpec, where: string): PlannedTensor {
  if (typeof name !== 'string') throw new FormatError(expected('a string', `${where} name`, name));
  const label = `tensor ${q(name)}`;
  if (name === '__metadata__') {
    throw new FormatError(expected('a tensor name other than the reserved "__metadata__"', `${where} name`, name));
  }
  if (LONE_SURROGATE.test(name)) {
    throw new FormatError(expected('a well-formed Unicode string (no lone surrogates)', `${where} name`, name));
  }
  if (typeof t !== 'object' || t === null) throw new FormatError(expected('a tensor object', label, t));
  const dtype = t.dtype;
  if (!isDType(dtype)) throw new FormatError(expected(`a safetensors dtype (${DTYPES.join(', ')})`, `${label} dtype`, dtype));
  const shape = [...checkShape(t.shape, `${label} shape`)];
  const nbytes = byteSize(dtype, shape, (msg) => {
    throw new ShapeError(`${label}: ${msg}`);
  });
  const nelem = (nbytes * 8) / DTYPE_BITS[dtype];
  const data: unknown = t.data;
  const tag = typedTag(data);
  const typed = TYPED_FOR[dtype] ?? [];
  let bytes: () => Uint8Array;

  if (tag !== undefined && typed.includes(tag)) {
    const arr = data as TypedArray;
    if (arr.length !== nelem) {
      throw new ShapeError(expected(`${nelem} elements (shape ${fmtShape(shape)})`, `${label} data`, data));
    }
    if ((dtype === 'F16' || dtype === 'BF16') && tag === 'Float32Array') {
      bytes = () => leBytes(narrow(arr as Float32Array, dtype));
    } else {
      bytes = () => leBytes(arr);
    }
  } else if (tag === 'Uint8Array') {
    const raw = data as Uint8Array;
    if (raw.byteLength !== nbytes) {
      throw new ShapeError(
        expected(`${nbytes} raw bytes (dtype ${dtype}, shape ${fmtShape(shape)})`, `${label} data`, data),
      );
    }
    bytes = () => raw;
  } else {
    const accepted = [...typed, ...(typed.includes('Uint8Array') ? [] : ['Uint8Array of raw bytes'])].join(' or ');
    throw new FormatError(expected(accepted, `${label} data (dtype ${dtype})`, data));
  }
  return { name, nameKey: codePointKey(name), dtype, shape, nbytes, bytes };
}

/** Little-endian bytes of a typed array (a view on little-endian hosts). */
function leBytes(arr: TypedArray): Uint8Array {
  const b = new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
  if (LITTLE_ENDIAN || arr.BYTES_PER_ELEMENT === 1) return b;
  const copy = new Uint8Array(b);
  swapBytes(copy, arr.BYTES_PER_ELEMENT);
  return copy;
}

function planSafetensors(tensors: TensorList, metadata: Record<string, string> | undefined): Plan {
  const planned: PlannedTensor[] = [];
  if (tensors instanceof Map) {
    for (const [name, t] of tensors as ReadonlyMap<string, TensorSpec>) planned.push(planTensor(name, t, `Map key`));
  } else if (tensors !== null && typeof tensors === 'object' && Symbol.iterator in tensors) {
    let i = 0;
    for (const t of tensors as Iterable<TensorInput>) {
      const where = `tensors[${i++}]`;
      if (typeof t !== 'object' || t === null) throw new FormatError(expected('a tensor object', where, t));
      planned.push(planTensor(t.name, t, where));
    }
  } else {
    throw new FormatError(expected('an array of tensors or a Map from name to tensor', 'tensors', tensors));
  }

  const seen = new Set<string>();
  for (const t of planned) {
    if (seen.has(t.name)) throw new FormatError(`duplicate tensor name ${q(t.name)}`, { tensor: t.name });
    seen.add(t.name);
  }

  // Reference order: descending dtype alignment (reference dtype order), then name.
  planned.sort((a, b) => DTYPE_RANK.get(b.dtype)! - DTYPE_RANK.get(a.dtype)! || cmp(a.nameKey, b.nameKey));

  let json = '{';
  let first = true;
  if (metadata !== undefined) {
    if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) {
      throw new FormatError(expected('an object of string values', 'metadata', metadata));
    }
    const keys = Object.keys(metadata)
      .map((k) => ({ k, key: codePointKey(k) }))
      .sort((a, b) => cmp(a.key, b.key))
      .map((x) => x.k);
    const parts: string[] = [];
    for (const k of keys) {
      const v: unknown = metadata[k];
      if (typeof v !== 'string') throw new FormatError(expected('a string', `metadata[${q(k)}]`, v));
      if (LONE_SURROGATE.test(k)) throw new FormatError(expected('a well-formed Unicode key', 'metadata key', k));
      if (LONE_SURROGATE.test(v)) throw new FormatError(expected('a well-formed Unicode string', `metadata[${q(k)}]`, v));
      parts.push(`${JSON.stringify(k)}:${JSON.stringify(v)}`);
    }
    json += `"__metadata__":{${parts.join(',')}}`;
    first = false;
  }
  let offset = 0;
  for (const t of planned) {
    const end = offset + t.nbytes;
    if (!Number.isSafeInteger(end)) throw new ShapeError('total tensor data is too large for one safetensors file');
    json += `${first ? '' : ','}${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${end}]}`;
    first = false;
    offset = end;
  }
  json += '}';

  const encoded = utf8Encoder.encode(json);
  const n = Math.ceil(encoded.length / 8) * 8;
  if (n > MAX_HEADER_SIZE) {
    throw new FormatError(`header would be ${n} bytes, more than the ${MAX_HEADER_SIZE}-byte limit readers accept`);
  }
  const head = new Uint8Array(8 + n);
  new DataView(head.buffer).setBigUint64(0, BigInt(n), true);
  head.set(encoded, 8);
  head.fill(0x20, 8 + encoded.length);
  return { head, tensors: planned, dataLength: offset };
}

/**
 * Serializes tensors to a safetensors file image.
 *
 * Order (deterministic, same as the reference writer): tensors sorted by dtype
 * alignment, largest first (F64/I64/U64, then C64, F32/I32/U32, BF16/F16/U16/I16,
 * 8-bit types, BOOL), ties broken by name in UTF-8 byte order; data laid out
 * contiguously in that order. `__metadata__` (only when `metadata` is given)
 * comes first, keys sorted. The header is padded with spaces to a multiple of 8.
 *
 * Throws {@link ShapeError} when a shape is invalid or the data length does
 * not match it, {@link FormatError} for other invalid input (unknown dtype,
 * wrong array type, duplicate or reserved name, non-string metadata).
 */
export function serializeSafetensors(tensors: TensorList, metadata?: Record<string, string>): Uint8Array {
  const plan = planSafetensors(tensors, metadata);
  const out = new Uint8Array(plan.head.length + plan.dataLength);
  out.set(plan.head, 0);
  let off = plan.head.length;
  for (const t of plan.tensors) {
    out.set(t.bytes(), off);
    off += t.nbytes;
  }
  return out;
}

/**
 * Writes a safetensors file atomically: the input is fully validated first,
 * then the file is written to a uniquely named temporary file in the same
 * directory, fsynced, renamed over `path`, and the directory is fsynced. On
 * any error the temporary file is removed and an existing `path` is left
 * untouched. (The new file gets default permissions; a symlink at `path` is
 * replaced, not followed.) Data are streamed tensor by tensor, without
 * building the whole file in memory.
 */
export async function writeSafetensors(
  path: string,
  tensors: TensorList,
  metadata?: Record<string, string>,
): Promise<void> {
  if (typeof path !== 'string' || path === '') throw new FormatError(expected('a file path', 'path', path));
  const plan = planSafetensors(tensors, metadata); // throws before touching the disk
  function* chunks() {
    yield plan.head;
    for (const t of plan.tensors) yield t.bytes();
  }
  await writeFileAtomic(path, chunks());
}
