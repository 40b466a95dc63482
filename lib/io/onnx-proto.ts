/**
 * A minimal protobuf encoder for exactly the ONNX messages an exported ViT needs.
 *
 * Field numbers and types are those of onnx/onnx.proto (proto2, unchanged since IR version 7;
 * the messages used here are stable across every IR version ONNX Runtime reads):
 *
 *     ModelProto          ir_version = 1 (int64), producer_name = 2, producer_version = 3,
 *                         domain = 4, model_version = 5 (int64), doc_string = 6,
 *                         graph = 7 (GraphProto), opset_import = 8 (repeated OperatorSetIdProto),
 *                         metadata_props = 14 (repeated StringStringEntryProto)
 *     OperatorSetIdProto  domain = 1 (string), version = 2 (int64)
 *     StringStringEntryProto  key = 1, value = 2
 *     GraphProto          node = 1 (repeated NodeProto), name = 2, initializer = 5
 *                         (repeated TensorProto), doc_string = 10, input = 11, output = 12
 *                         (repeated ValueInfoProto)
 *     NodeProto           input = 1, output = 2 (repeated string), name = 3, op_type = 4,
 *                         attribute = 5 (repeated AttributeProto), doc_string = 6, domain = 7
 *     AttributeProto      name = 1, f = 2 (float), i = 3 (int64), s = 4 (bytes),
 *                         t = 5 (TensorProto), floats = 7, ints = 8 (repeated int64),
 *                         type = 20 (AttributeType: FLOAT 1, INT 2, STRING 3, TENSOR 4,
 *                         FLOATS 6, INTS 7)
 *     TensorProto         dims = 1 (repeated int64), data_type = 2 (DataType: FLOAT 1,
 *                         INT64 7), name = 8, raw_data = 9 (bytes, little-endian)
 *     ValueInfoProto      name = 1, type = 2 (TypeProto)
 *     TypeProto           tensor_type = 1 (TypeProto.Tensor)
 *     TypeProto.Tensor    elem_type = 1 (int32 DataType), shape = 2 (TensorShapeProto)
 *     TensorShapeProto    dim = 1 (repeated Dimension)
 *     Dimension           dim_value = 1 (int64), dim_param = 2 (string)
 *
 * Wire format (https://protobuf.dev/programming-guides/encoding/): a field is a varint key
 * `(field << 3) | wireType` followed by its value; wire type 0 = varint (int32 / int64 / enum;
 * negative values as their 64-bit two's complement, 10 bytes), 2 = length-delimited (string,
 * bytes, sub-message, packed repeated scalars), 5 = fixed32 (float). Repeated int64 fields are
 * written unpacked (one key per value), which every proto2 and proto3 parser accepts, and which
 * is what proto2 files like onnx.proto specify without [packed = true].
 *
 * Encoding produces a list of byte chunks (a rope) with their total length rather than one
 * buffer, so multi-gigabyte weights are never copied into a single contiguous array: raw tensor
 * data is referenced, not copied.
 */

/** TensorProto.DataType values used here. */
export const DataType = { FLOAT: 1, INT64: 7 } as const;
export type DataTypeName = keyof typeof DataType;

/** AttributeProto.AttributeType values used here. */
const AttributeType = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, FLOATS: 6, INTS: 7 } as const;

/** The largest message protobuf implementations (and so ONNX Runtime) accept: 2 GiB − 1. */
export const PROTOBUF_MAX_BYTES = 2 ** 31 - 1;

export interface OnnxTensor {
  name: string;
  dataType: DataTypeName;
  dims: readonly number[];
  /** The elements, row-major, little-endian, IEEE 754 for floats. */
  raw: Uint8Array;
}

export type OnnxAttribute =
  | { name: string; type: 'float'; value: number }
  | { name: string; type: 'int'; value: number }
  | { name: string; type: 'string'; value: string }
  | { name: string; type: 'tensor'; value: OnnxTensor }
  | { name: string; type: 'floats'; value: readonly number[] }
  | { name: string; type: 'ints'; value: readonly number[] };

export interface OnnxNode {
  opType: string;
  inputs: readonly string[];
  outputs: readonly string[];
  name?: string;
  domain?: string;
  attributes?: readonly OnnxAttribute[];
}

/** A tensor-typed graph input or output; a string dimension is symbolic (dim_param). */
export interface OnnxValueInfo {
  name: string;
  elemType: DataTypeName;
  shape: readonly (number | string)[];
}

export interface OnnxGraph {
  name: string;
  nodes: readonly OnnxNode[];
  initializers: readonly OnnxTensor[];
  inputs: readonly OnnxValueInfo[];
  outputs: readonly OnnxValueInfo[];
  docString?: string;
}

export interface OnnxModel {
  irVersion: number;
  opsetImports: readonly { domain: string; version: number }[];
  producerName?: string;
  producerVersion?: string;
  docString?: string;
  graph: OnnxGraph;
  metadata?: Readonly<Record<string, string>>;
}

// ---- wire-level writer ---------------------------------------------------------------------

const utf8 = new TextEncoder();
const SMALL = 4096;

/**
 * Builds a message as a rope: small scalars are appended to a scratch buffer, large byte
 * arrays and sub-messages are appended as chunks by reference.
 */
export class ProtoWriter {
  readonly chunks: Uint8Array[] = [];
  #scratch = new Uint8Array(64);
  #pos = 0;
  #flushedLength = 0;

  /** Bytes written so far. */
  get length(): number {
    return this.#flushedLength + this.#pos;
  }

  #ensure(n: number): void {
    if (this.#pos + n <= this.#scratch.length) return;
    if (this.#pos + n <= SMALL) {
      // grow the scratch buffer (small messages stay small)
      const grown = new Uint8Array(Math.min(SMALL, Math.max(2 * this.#scratch.length, this.#pos + n)));
      grown.set(this.#scratch.subarray(0, this.#pos));
      this.#scratch = grown;
      return;
    }
    this.#flush();
    if (n > this.#scratch.length) this.#scratch = new Uint8Array(n);
  }

  /** Moves the scratch bytes into an exactly sized chunk and reuses the scratch buffer. */
  #flush(): void {
    if (this.#pos === 0) return;
    this.chunks.push(this.#scratch.slice(0, this.#pos));
    this.#flushedLength += this.#pos;
    this.#pos = 0;
  }

  /** An unsigned varint of up to 64 bits; negative numbers as 64-bit two's complement. */
  varint(value: number | bigint): void {
    let v: bigint;
    if (typeof value === 'number') {
      if (!Number.isSafeInteger(value)) throw new RangeError(`not a safe integer: ${value}`);
      if (value >= 0 && value < 2 ** 31) {
        // fast path
        this.#ensure(5);
        let n = value;
        while (n >= 0x80) {
          this.#scratch[this.#pos++] = (n & 0x7f) | 0x80;
          n >>>= 7;
        }
        this.#scratch[this.#pos++] = n;
        return;
      }
      v = BigInt(value);
    } else v = value;
    v = BigInt.asUintN(64, v);
    this.#ensure(10);
    while (v >= 0x80n) {
      this.#scratch[this.#pos++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    this.#scratch[this.#pos++] = Number(v);
  }

  key(field: number, wireType: 0 | 2 | 5): void {
    this.varint(field * 8 + wireType);
  }

  /** A varint field (int32, int64, enum). */
  int(field: number, value: number): void {
    this.key(field, 0);
    this.varint(value);
  }

  /** A float field (fixed32, little-endian). */
  float(field: number, value: number): void {
    this.key(field, 5);
    this.#ensure(4);
    new DataView(this.#scratch.buffer, this.#scratch.byteOffset).setFloat32(this.#pos, value, true);
    this.#pos += 4;
  }

  /** A bytes field; arrays larger than the scratch buffer are referenced, not copied. */
  bytes(field: number, data: Uint8Array): void {
    this.key(field, 2);
    this.varint(data.length);
    this.#raw(data);
  }

  string(field: number, value: string): void {
    this.bytes(field, utf8.encode(value));
  }

  /** An embedded message field. */
  message(field: number, sub: ProtoWriter): void {
    sub.#flush();
    this.key(field, 2);
    this.varint(sub.length);
    this.#flush();
    for (const c of sub.chunks) this.chunks.push(c);
    this.#flushedLength += sub.length;
  }

  #raw(data: Uint8Array): void {
    if (data.length <= 256) {
      this.#ensure(data.length);
      this.#scratch.set(data, this.#pos);
      this.#pos += data.length;
    } else {
      this.#flush();
      this.chunks.push(data);
      this.#flushedLength += data.length;
    }
  }

  /** The finished message as chunks (the writer must not be used afterwards). */
  finish(): { chunks: Uint8Array[]; byteLength: number } {
    this.#flush();
    return { chunks: this.chunks, byteLength: this.#flushedLength };
  }
}

// ---- ONNX messages -------------------------------------------------------------------------

function tensorProto(t: OnnxTensor): ProtoWriter {
  const w = new ProtoWriter();
  for (const d of t.dims) w.int(1, d); // dims
  w.int(2, DataType[t.dataType]); // data_type
  w.string(8, t.name); // name
  w.bytes(9, t.raw); // raw_data
  return w;
}

function attributeProto(a: OnnxAttribute): ProtoWriter {
  const w = new ProtoWriter();
  w.string(1, a.name);
  switch (a.type) {
    case 'float':
      w.float(2, a.value);
      w.int(20, AttributeType.FLOAT);
      break;
    case 'int':
      w.int(3, a.value);
      w.int(20, AttributeType.INT);
      break;
    case 'string':
      w.string(4, a.value);
      w.int(20, AttributeType.STRING);
      break;
    case 'tensor':
      w.message(5, tensorProto(a.value));
      w.int(20, AttributeType.TENSOR);
      break;
    case 'floats':
      for (const f of a.value) w.float(7, f);
      w.int(20, AttributeType.FLOATS);
      break;
    case 'ints':
      for (const i of a.value) w.int(8, i);
      w.int(20, AttributeType.INTS);
      break;
  }
  return w;
}

function nodeProto(n: OnnxNode): ProtoWriter {
  const w = new ProtoWriter();
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  if (n.name !== undefined) w.string(3, n.name);
  w.string(4, n.opType);
  for (const a of n.attributes ?? []) w.message(5, attributeProto(a));
  if (n.domain !== undefined) w.string(7, n.domain);
  return w;
}

function valueInfoProto(v: OnnxValueInfo): ProtoWriter {
  const shape = new ProtoWriter();
  for (const d of v.shape) {
    const dim = new ProtoWriter();
    if (typeof d === 'number') dim.int(1, d); // dim_value
    else dim.string(2, d); // dim_param
    shape.message(1, dim);
  }
  const tensorType = new ProtoWriter();
  tensorType.int(1, DataType[v.elemType]); // elem_type
  tensorType.message(2, shape); // shape
  const type = new ProtoWriter();
  type.message(1, tensorType); // tensor_type
  const w = new ProtoWriter();
  w.string(1, v.name);
  w.message(2, type);
  return w;
}

function graphProto(g: OnnxGraph): ProtoWriter {
  const w = new ProtoWriter();
  for (const n of g.nodes) w.message(1, nodeProto(n));
  w.string(2, g.name);
  for (const t of g.initializers) w.message(5, tensorProto(t));
  if (g.docString !== undefined) w.string(10, g.docString);
  for (const v of g.inputs) w.message(11, valueInfoProto(v));
  for (const v of g.outputs) w.message(12, valueInfoProto(v));
  return w;
}

/** Encodes a ModelProto as a rope of chunks; concatenated, they are the .onnx file. */
export function encodeModel(m: OnnxModel): { chunks: Uint8Array[]; byteLength: number } {
  const w = new ProtoWriter();
  w.int(1, m.irVersion); // ir_version
  if (m.producerName !== undefined) w.string(2, m.producerName);
  if (m.producerVersion !== undefined) w.string(3, m.producerVersion);
  if (m.docString !== undefined) w.string(6, m.docString);
  w.message(7, graphProto(m.graph)); // graph
  for (const o of m.opsetImports) {
    const op = new ProtoWriter();
    op.string(1, o.domain);
    op.int(2, o.version);
    w.message(8, op); // opset_import
  }
  for (const [key, value] of Object.entries(m.metadata ?? {})) {
    const e = new ProtoWriter();
    e.string(1, key);
    e.string(2, value);
    w.message(14, e); // metadata_props
  }
  return w.finish();
}

/** Concatenates a rope into one buffer. */
export function concatChunks(rope: { chunks: readonly Uint8Array[]; byteLength: number }): Uint8Array {
  const out = new Uint8Array(rope.byteLength);
  let off = 0;
  for (const c of rope.chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}
