/**
 * Reader for NumPy's .npy arrays and .npz archives (Google's ViT checkpoints are .npz).
 *
 * An .npz file is a zip archive (members stored or deflated; numpy writes ZIP64 local headers)
 * with one `<key>.npy` member per array. The zip container is read with yauzl, which follows the
 * central directory and checks each member's sizes; we add a CRC-32 check where Node has
 * zlib.crc32 (Node ≥ 20.15). An .npy member is
 *
 *     "\x93NUMPY" | major u8 | minor u8 | header length (u16 LE in version 1, u32 LE in 2 and 3)
 *     | header: a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
 *       (latin-1 in versions 1 and 2, UTF-8 in 3), padded with spaces and a newline
 *     | the elements, C (row-major) or Fortran (column-major) order
 *
 * Reading is strict, and every error is a {@link FormatError} that names the file and member:
 * the dict must have exactly numpy's three keys, the shape must be a tuple of non-negative
 * integers, and the data must be exactly prod(shape) × itemsize bytes (a truncated or padded
 * member is refused, where numpy silently ignores trailing bytes). Object arrays ('|O') are
 * refused: their data is a Python pickle, which can run code when loaded (numpy's
 * allow_pickle=False, always). Fortran-ordered arrays are transposed to C order on reading.
 *
 * Supported dtypes: f2 f4 f8, i1 i2 i4 i8, u1 u2 u4 u8, b1, either byte order (big-endian data
 * is swapped to little-endian). Others (complex, strings, structured, void — which is how JAX's
 * bfloat16 arrays reach numpy) are refused with their descr in the message.
 */
import { createRequire } from 'node:module';
import * as zlib from 'node:zlib';
import { FormatError } from '../errors.js';

export type NpyDType = 'f2' | 'f4' | 'f8' | 'i1' | 'i2' | 'i4' | 'i8' | 'u1' | 'u2' | 'u4' | 'u8' | 'b1';

/** One array of an .npy file or .npz archive. */
export interface NpyArray {
  /** The npz key (member name without `.npy`), or '' for a lone .npy. */
  name: string;
  dtype: NpyDType;
  shape: number[];
  /** The elements in C order, little-endian (exactly prod(shape) × itemsize bytes). */
  data: Uint8Array;
}

const ITEMSIZE: Readonly<Record<NpyDType, number>> = {
  f2: 2, f4: 4, f8: 8, i1: 1, i2: 2, i4: 4, i8: 8, u1: 1, u2: 2, u4: 4, u8: 8, b1: 1,
};

export function npyItemSize(dtype: NpyDType): number {
  return ITEMSIZE[dtype];
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

interface Where {
  file?: string;
  member?: string;
}

function fail(where: Where, message: string, cause?: unknown): never {
  const head = where.file !== undefined ? `invalid npz file ${where.file}` : 'invalid npy data';
  const member = where.member !== undefined ? `: member ${JSON.stringify(where.member)}` : '';
  throw new FormatError(`${head}${member}: ${message}`, {
    ...(where.file !== undefined ? { file: where.file } : {}),
    ...(where.member !== undefined ? { tensor: where.member } : {}),
    ...(cause !== undefined ? { cause } : {}),
  });
}

// ---------------------------------------------------------------------------------------------
// The header: a Python literal
// ---------------------------------------------------------------------------------------------

type PyValue = string | number | boolean | null | PyValue[] | PyTuple | Map<string, PyValue>;
class PyTuple {
  constructor(readonly items: PyValue[]) {}
}

/** Parses the subset of Python literals numpy writes: dicts, tuples, lists, str, int, bool, None. */
class PyLiteral {
  private pos = 0;
  constructor(private readonly s: string) {}

  parse(): PyValue {
    const v = this.value(0);
    this.ws();
    if (this.pos !== this.s.length) this.err(`unexpected ${JSON.stringify(this.s.slice(this.pos, this.pos + 10))}`);
    return v;
  }

  private err(message: string): never {
    throw new Error(`${message} at character ${this.pos}`);
  }

  private ws(): void {
    while (this.pos < this.s.length && ' \t\n\r'.includes(this.s[this.pos])) this.pos++;
  }

  private value(depth: number): PyValue {
    if (depth > 32) this.err('nesting too deep');
    this.ws();
    const c = this.s[this.pos];
    if (c === '{') return this.dict(depth);
    if (c === '(') return new PyTuple(this.seq(')', depth));
    if (c === '[') return this.seq(']', depth);
    if (c === "'" || c === '"') return this.str();
    const m = /^(?:[-+]?\d+L?|True|False|None)/.exec(this.s.slice(this.pos, this.pos + 40));
    if (!m) this.err(c === undefined ? 'unexpected end of header' : `unexpected ${JSON.stringify(c)}`);
    this.pos += m[0].length;
    if (m[0] === 'True') return true;
    if (m[0] === 'False') return false;
    if (m[0] === 'None') return null;
    const n = Number(m[0].replace(/L$/, ''));
    if (!Number.isSafeInteger(n)) this.err(`integer ${m[0]} is too large`);
    return n;
  }

  private str(): string {
    const quote = this.s[this.pos++];
    let out = '';
    while (this.pos < this.s.length) {
      const c = this.s[this.pos++];
      if (c === quote) return out;
      if (c === '\\') {
        const e = this.s[this.pos++];
        out += e === 'n' ? '\n' : e === 't' ? '\t' : e;
      } else out += c;
    }
    this.err('unterminated string');
  }

  private seq(close: string, depth: number): PyValue[] {
    this.pos++;
    const items: PyValue[] = [];
    for (;;) {
      this.ws();
      if (this.s[this.pos] === close) {
        this.pos++;
        return items;
      }
      items.push(this.value(depth + 1));
      this.ws();
      if (this.s[this.pos] === ',') this.pos++;
      else if (this.s[this.pos] !== close) this.err(`expected ',' or '${close}'`);
    }
  }

  private dict(depth: number): Map<string, PyValue> {
    this.pos++;
    const map = new Map<string, PyValue>();
    for (;;) {
      this.ws();
      if (this.s[this.pos] === '}') {
        this.pos++;
        return map;
      }
      const key = this.value(depth + 1);
      if (typeof key !== 'string') this.err('expected a string key');
      if (map.has(key)) this.err(`duplicate key ${JSON.stringify(key)}`);
      this.ws();
      if (this.s[this.pos] !== ':') this.err("expected ':'");
      this.pos++;
      map.set(key, this.value(depth + 1));
      this.ws();
      if (this.s[this.pos] === ',') this.pos++;
      else if (this.s[this.pos] !== '}') this.err("expected ',' or '}'");
    }
  }
}

function show(v: PyValue): string {
  if (v instanceof PyTuple) return `(${v.items.map(show).join(', ')}${v.items.length === 1 ? ',' : ''})`;
  if (Array.isArray(v)) return `[${v.map(show).join(', ')}]`;
  if (v instanceof Map) return '{…}';
  if (typeof v === 'string') return `'${v}'`;
  return v === null ? 'None' : typeof v === 'boolean' ? (v ? 'True' : 'False') : String(v);
}

/** The dtype for a descr string, or a reason it is refused. */
function dtypeOf(descr: PyValue, where: Where): { dtype: NpyDType; bigEndian: boolean } {
  if (typeof descr !== 'string') fail(where, `structured arrays are not supported (descr ${show(descr)})`);
  const m = /^([<>|=])?([a-zA-Z])(\d*)$/.exec(descr);
  const kind = m?.[2];
  if (kind === 'O')
    fail(where, `holds Python objects (dtype '${descr}'), which can only be read by unpickling; refusing (allow_pickle is never used)`);
  if (kind === 'V')
    fail(where, `raw void dtype '${descr}' is not supported (JAX writes bfloat16 arrays this way; save them as float32)`);
  const dtype = m && `${kind}${m[3]}`;
  if (!m || !dtype || !(dtype in ITEMSIZE)) fail(where, `unsupported dtype '${descr}' (supported: <f2 <f4 <f8 <i1…<i8 <u1…<u8 |b1)`);
  return { dtype: dtype as NpyDType, bigEndian: m[1] === '>' && ITEMSIZE[dtype as NpyDType] > 1 };
}

// ---------------------------------------------------------------------------------------------
// .npy
// ---------------------------------------------------------------------------------------------

const latin1 = new TextDecoder('latin1');
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Parses one .npy image. `where` names the file and member in errors. The returned data is a
 * view of `bytes` when it needs no reordering, else a new buffer.
 */
export function parseNpy(bytes: Uint8Array, where: Where = {}): Omit<NpyArray, 'name'> {
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b))
    fail(where, bytes.length < 10 ? `only ${bytes.length} bytes, too short for an .npy header` : 'not an .npy array (no \\x93NUMPY magic)');
  const major = bytes[6];
  const minor = bytes[7];
  if (major < 1 || major > 3) fail(where, `unsupported .npy format version ${major}.${minor}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lenBytes = major === 1 ? 2 : 4;
  if (bytes.length < 8 + lenBytes) fail(where, 'truncated .npy header');
  const headerLen = major === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  const start = 8 + lenBytes;
  const dataStart = start + headerLen;
  if (dataStart > bytes.length)
    fail(where, `truncated .npy header (declares ${headerLen} bytes, ${bytes.length - start} present)`);
  let text: string;
  try {
    text = (major === 3 ? utf8 : latin1).decode(bytes.subarray(start, dataStart));
  } catch (e) {
    fail(where, 'the .npy header is not valid UTF-8', e);
  }
  let header: PyValue;
  try {
    header = new PyLiteral(text).parse();
  } catch (e) {
    fail(where, `cannot parse the .npy header ${JSON.stringify(text.trim().slice(0, 120))}: ${(e as Error).message}`, e);
  }
  if (!(header instanceof Map)) fail(where, `the .npy header is not a dict: ${show(header)}`);
  const keys = [...header.keys()].sort();
  if (keys.join() !== 'descr,fortran_order,shape')
    fail(where, `the .npy header must have exactly the keys 'descr', 'fortran_order', 'shape'; got ${keys.map((k) => `'${k}'`).join(', ')}`);
  const { dtype, bigEndian } = dtypeOf(header.get('descr')!, where);
  const fortran = header.get('fortran_order')!;
  if (typeof fortran !== 'boolean') fail(where, `expected True or False for fortran_order, got ${show(fortran)}`);
  const shapeValue = header.get('shape')!;
  if (!(shapeValue instanceof PyTuple) || !shapeValue.items.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0))
    fail(where, `expected a tuple of non-negative integers for shape, got ${show(shapeValue)}`);
  const shape = shapeValue.items as number[];
  const itemsize = ITEMSIZE[dtype];
  const count = shape.reduce((a, b) => a * b, 1);
  const need = count * itemsize;
  if (!Number.isSafeInteger(need)) fail(where, `shape (${shape.join(', ')}) is too large`);
  const have = bytes.length - dataStart;
  if (have !== need)
    fail(
      where,
      `${have < need ? 'truncated: ' : ''}holds ${have} bytes of data, but shape (${shape.join(', ')}) of dtype '${header.get('descr')}' needs ${need}`,
    );
  let data = bytes.subarray(dataStart);
  if (bigEndian) {
    data = new Uint8Array(data);
    for (let i = 0; i < data.length; i += itemsize) data.subarray(i, i + itemsize).reverse();
  }
  if (fortran && shape.filter((d) => d > 1).length > 1) data = fortranToC(data, shape, itemsize);
  return { dtype, shape: [...shape], data };
}

/** Reorders column-major elements to row-major. */
function fortranToC(src: Uint8Array, shape: readonly number[], itemsize: number): Uint8Array {
  const n = shape.length;
  const out = new Uint8Array(src.length);
  // Fortran strides (in elements): stride[0] = 1, stride[k] = stride[k-1]·shape[k-1].
  const stride = new Array<number>(n);
  for (let k = 0, s = 1; k < n; k++) {
    stride[k] = s;
    s *= shape[k];
  }
  const idx = new Array<number>(n).fill(0);
  const count = src.length / itemsize;
  let f = 0; // Fortran offset of the current C-order element
  for (let c = 0; c < count; c++) {
    out.set(src.subarray(f * itemsize, (f + 1) * itemsize), c * itemsize);
    for (let k = n - 1; k >= 0; k--) {
      idx[k]++;
      f += stride[k];
      if (idx[k] < shape[k]) break;
      f -= stride[k] * shape[k];
      idx[k] = 0;
    }
  }
  return out;
}

/** The values of an array as a new Float32Array (integers and booleans converted). */
export function npyToFloat32(array: Pick<NpyArray, 'dtype' | 'data'> & { name?: string }): Float32Array {
  const { dtype, data } = array;
  const n = data.length / ITEMSIZE[dtype];
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out = new Float32Array(n);
  switch (dtype) {
    case 'f4':
      if (data.byteOffset % 4 === 0) out.set(new Float32Array(data.buffer, data.byteOffset, n));
      else for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
      break;
    case 'f8':
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(i * 8, true);
      break;
    case 'f2':
      for (let i = 0; i < n; i++) out[i] = halfToFloat(dv.getUint16(i * 2, true));
      break;
    case 'i1':
      for (let i = 0; i < n; i++) out[i] = dv.getInt8(i);
      break;
    case 'u1':
      for (let i = 0; i < n; i++) out[i] = data[i];
      break;
    case 'b1':
      for (let i = 0; i < n; i++) out[i] = data[i] ? 1 : 0;
      break;
    case 'i2':
      for (let i = 0; i < n; i++) out[i] = dv.getInt16(i * 2, true);
      break;
    case 'u2':
      for (let i = 0; i < n; i++) out[i] = dv.getUint16(i * 2, true);
      break;
    case 'i4':
      for (let i = 0; i < n; i++) out[i] = dv.getInt32(i * 4, true);
      break;
    case 'u4':
      for (let i = 0; i < n; i++) out[i] = dv.getUint32(i * 4, true);
      break;
    case 'i8':
      for (let i = 0; i < n; i++) out[i] = Number(dv.getBigInt64(i * 8, true));
      break;
    case 'u8':
      for (let i = 0; i < n; i++) out[i] = Number(dv.getBigUint64(i * 8, true));
      break;
  }
  return out;
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

// ---------------------------------------------------------------------------------------------
// .npz (zip) via yauzl
// ---------------------------------------------------------------------------------------------

/** The part of yauzl's API we use (it ships no types). */
interface ZipEntry {
  fileName: string;
  compressionMethod: number;
  compressedSize: number;
  uncompressedSize: number;
  crc32: number;
  isEncrypted(): boolean;
}
interface ZipFile {
  readEntry(): void;
  openReadStream(entry: ZipEntry, cb: (err: Error | null, stream?: NodeJS.ReadableStream) => void): void;
  close(): void;
  on(event: 'entry', cb: (entry: ZipEntry) => void): this;
  on(event: 'end', cb: () => void): this;
  on(event: 'error', cb: (err: Error) => void): this;
  removeAllListeners(event?: string): this;
}
interface ZipOptions {
  lazyEntries: boolean;
  autoClose?: boolean;
  validateEntrySizes: boolean;
  strictFileNames: boolean;
  decodeStrings: boolean;
}
interface Yauzl {
  open(path: string, options: ZipOptions, cb: (err: Error | null, zip?: ZipFile) => void): void;
  fromBuffer(buffer: Buffer, options: ZipOptions, cb: (err: Error | null, zip?: ZipFile) => void): void;
}

const yauzl = createRequire(import.meta.url)('yauzl') as Yauzl;
const crc32 = (zlib as unknown as { crc32?: (data: Uint8Array) => number }).crc32;

/** A system error (ENOENT, EACCES, …): passed through unchanged. */
function isSystemError(e: unknown): boolean {
  return typeof (e as NodeJS.ErrnoException)?.code === 'string' && typeof (e as NodeJS.ErrnoException).syscall === 'string';
}

export interface ReadNpzOptions {
  /** Only arrays whose key passes are decoded (the others are still listed by name). */
  filter?: (key: string) => boolean;
}

export interface NpzContents {
  /** Decoded arrays by key, in archive order. */
  arrays: Map<string, NpyArray>;
  /** Every key in the archive, decoded or not. */
  keys: string[];
}

/**
 * Reads an .npz archive (a path, or the bytes of one) member by member. Throws a FormatError
 * naming the file and member for anything malformed; system errors (a missing file) pass
 * through.
 */
export async function readNpz(source: string | Uint8Array, options: ReadNpzOptions = {}): Promise<NpzContents> {
  const file = typeof source === 'string' ? source : undefined;
  const label: Where = { file: file ?? '(buffer)' };
  const zipOptions: ZipOptions = {
    lazyEntries: true,
    autoClose: false,
    validateEntrySizes: true,
    strictFileNames: true,
    decodeStrings: true,
  };
  const zip = await new Promise<ZipFile>((resolve, reject) => {
    const done = (err: Error | null, z?: ZipFile) => {
      if (err || !z) {
        if (isSystemError(err)) reject(err);
        else
          try {
            fail(label, `not a zip archive, or a damaged one (${err?.message ?? 'no archive'})`, err);
          } catch (e) {
            reject(e);
          }
      } else resolve(z);
    };
    if (typeof source === 'string') yauzl.open(source, zipOptions, done);
    else yauzl.fromBuffer(Buffer.from(source.buffer, source.byteOffset, source.byteLength), zipOptions, done);
  });
  try {
    const arrays = new Map<string, NpyArray>();
    const keys: string[] = [];
    const members = new Set<string>();
    for (;;) {
      const entry = await nextEntry(zip, label);
      if (!entry) break;
      const name = entry.fileName;
      if (name.endsWith('/')) continue; // a directory
      const where: Where = { ...label, member: name };
      if (members.has(name)) fail(where, 'appears twice in the archive');
      members.add(name);
      if (/(^|\/)(data\.pkl|version|\.format|byteorder|data\/\d+)$/.test(name))
        fail(label, 'this is a PyTorch checkpoint (torch.save), not an .npz: its weights are pickled; convert it to .safetensors');
      if (!name.endsWith('.npy')) fail(where, 'is not an .npy array (an .npz archive holds only <key>.npy members)');
      const key = name.slice(0, -4);
      keys.push(key);
      if (options.filter && !options.filter(key)) continue;
      if (entry.isEncrypted()) fail(where, 'is encrypted');
      if (entry.compressionMethod !== 0 && entry.compressionMethod !== 8)
        fail(where, `uses zip compression method ${entry.compressionMethod}; numpy writes only stored (0) or deflated (8) members`);
      const bytes = await readMember(zip, entry, where);
      if (crc32 && (crc32(bytes) >>> 0) !== entry.crc32 >>> 0)
        fail(where, `CRC-32 mismatch (the archive says ${hex(entry.crc32)}, the data gives ${hex(crc32(bytes))}): the member is corrupt`);
      arrays.set(key, { name: key, ...parseNpy(bytes, where) });
    }
    return { arrays, keys };
  } finally {
    zip.close();
  }
}

function hex(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

function nextEntry(zip: ZipFile, where: Where): Promise<ZipEntry | null> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      zip.removeAllListeners('entry');
      zip.removeAllListeners('end');
      zip.removeAllListeners('error');
    };
    zip.on('entry', (e) => {
      cleanup();
      resolve(e);
    });
    zip.on('end', () => {
      cleanup();
      resolve(null);
    });
    zip.on('error', (err) => {
      cleanup();
      if (isSystemError(err)) reject(err);
      else
        try {
          fail(where, `damaged zip directory: ${err.message}`, err);
        } catch (e) {
          reject(e);
        }
    });
    zip.readEntry();
  });
}

function readMember(zip: ZipFile, entry: ZipEntry, where: Where): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const bad = (err: unknown) => {
      if (isSystemError(err)) return reject(err);
      try {
        fail(where, `cannot be read, its stored data is damaged or truncated (${(err as Error)?.message ?? String(err)})`, err);
      } catch (e) {
        reject(e);
      }
    };
    let out: Uint8Array;
    try {
      out = new Uint8Array(entry.uncompressedSize);
    } catch (e) {
      return bad(new Error(`${entry.uncompressedSize} bytes do not fit in memory`));
    }
    zip.openReadStream(entry, (err, stream) => {
      if (err || !stream) return bad(err);
      let off = 0;
      stream.on('data', (chunk: Buffer) => {
        if (off + chunk.length > out.length) {
          stream.removeAllListeners('data');
          return bad(new Error(`more data than the ${out.length} bytes the archive declares`));
        }
        out.set(chunk, off);
        off += chunk.length;
      });
      stream.on('error', bad);
      stream.on('end', () => {
        if (off !== out.length) bad(new Error(`truncated: ${off} of ${out.length} bytes`));
        else resolve(out);
      });
    });
  });
}
