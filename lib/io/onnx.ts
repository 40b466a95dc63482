/**
 * ONNX export of a plain (folded) ViT, computed exactly as timm's VisionTransformer does it,
 * so that ONNX Runtime (or any ONNX backend) serves a RepAdapter model at no extra cost.
 *
 * Graph (B = batch, S = imageSize, P = patchSize, G = S/P, N = G², T = N + 1, D = width,
 * H = heads, Dh = D/H, C = numClasses):
 *
 *     images [B,3,S,S] → Conv(kernel = stride = P) [B,D,G,G] → Reshape [B,D,N] → Transpose [B,N,D]
 *     → Concat(Expand(cls_token → [B,1,D]), ·, axis 1) [B,T,D] → Add pos_embed
 *     → per block i:
 *         h = LayerNormalization(x; norm1, eps)
 *         qkv = MatMul(h, qkvᵀ) + b → Reshape [B,T,3,H,Dh] → Transpose [3,B,H,T,Dh]
 *         q, k, v = Gather(·, 0 | 1 | 2)                                [B,H,T,Dh]
 *         a = Softmax(MatMul(q, Transpose(k)) · Dh^-0.5, axis −1)       [B,H,T,T]
 *         o = MatMul(a, v) → Transpose [B,T,H,Dh] → Reshape [B,T,D] → MatMul projᵀ + b
 *         x = x + o
 *         h = LayerNormalization(x; norm2, eps) → MatMul fc1ᵀ + b
 *         h = h · 0.5 · (1 + Erf(h / √2))                               (exact GELU)
 *         x = x + (MatMul(h, fc2ᵀ) + b)
 *     → LayerNormalization(norm) → Gather token 0 [B,D] → Gemm(head, transB) → logits [B,C]
 *
 * Linear weights are stored transposed ([in, out], named `<timm name>.T`) so that MatMul takes
 * them directly; every other initializer keeps its timm name and shape. Weights are raw
 * little-endian float32. The batch dimension is symbolic ("batch") by default.
 *
 * Only a plain ViT can be exported: a model that still has adapters is refused with an
 * ArgumentError that says to call fold() first (folding changes no output; it is in place, so
 * fold a copy to keep training the adapters: create a ViT with the same config, loadStateDict()
 * the adapted one's state dict, fold() that).
 *
 * The protobuf is encoded by ./onnx-proto.ts (no dependency); one ONNX file holds at most 2 GiB,
 * so models above that (ViT-H) are refused: external data is not written.
 */
import { endianness } from 'node:os';

import { ArgumentError, RepAdapterError, expected } from '../errors.js';
import type { ViT } from '../vit.js';
import { writeFileAtomic } from './atomic.js';
import {
  PROTOBUF_MAX_BYTES,
  concatChunks,
  encodeModel,
  type OnnxAttribute,
  type OnnxModel,
  type OnnxNode,
  type OnnxTensor,
} from './onnx-proto.js';

export interface OnnxExportOptions {
  /**
   * ONNX opset of the default domain, 17 (the default; the first with LayerNormalization)
   * to 23. The IR version follows the opset (8 for 17–18, 9 for 19–20, 10 for 21–22, 11 for 23).
   */
  opset?: number;
  /** A fixed batch size, or 'dynamic' (the default) for a symbolic batch dimension "batch". */
  batch?: number | 'dynamic';
}

/** Opsets this exporter writes, with the IR version each was released with. */
const IR_VERSION_OF_OPSET: Readonly<Record<number, number>> = Object.freeze({
  17: 8,
  18: 8,
  19: 9,
  20: 9,
  21: 10,
  22: 10,
  23: 11,
});
const MIN_OPSET = 17;
const MAX_OPSET = 23;

/** The name of the graph input ([B, 3, S, S] float32 images, normalised as for forward()). */
export const ONNX_INPUT = 'images';
/** The name of the graph output ([B, numClasses] float32 logits). */
export const ONNX_OUTPUT = 'logits';

/**
 * The ONNX model of a plain (folded) ViT as one buffer: the bytes of a .onnx file, which
 * `InferenceSession.create()` of onnxruntime also accepts directly.
 */
export function toOnnx(model: ViT, options: OnnxExportOptions = {}): Uint8Array {
  return concatChunks(buildRope(model, options));
}

/**
 * Writes the ONNX model of a plain (folded) ViT to `path`, atomically: it is written to a
 * temporary file in the same directory, fsynced and renamed over `path` (then the directory is
 * fsynced). On any error no file is left behind and an existing `path` is untouched.
 */
export async function exportOnnx(model: ViT, path: string, options: OnnxExportOptions = {}): Promise<void> {
  if (typeof path !== 'string' || path === '') throw new ArgumentError(expected('a file path', 'path', path));
  const rope = buildRope(model, options); // every check happens before the disk is touched
  await writeFileAtomic(path, rope.chunks);
}

// ---- the graph -------------------------------------------------------------------------------

function checkOptions(options: OnnxExportOptions): { opset: number; batch: number | 'batch' } {
  if (options === null || typeof options !== 'object') throw new ArgumentError(expected('an options object', 'options', options));
  for (const key of Object.keys(options))
    if (key !== 'opset' && key !== 'batch') throw new ArgumentError(`unknown ONNX export option ${JSON.stringify(key)}; known: opset, batch`);
  const opset = options.opset ?? MIN_OPSET;
  if (!Number.isInteger(opset) || opset < MIN_OPSET || opset > MAX_OPSET)
    throw new ArgumentError(expected(`an integer opset in [${MIN_OPSET}, ${MAX_OPSET}]`, 'opset', opset));
  const batch = options.batch ?? 'dynamic';
  if (batch !== 'dynamic' && !(Number.isSafeInteger(batch) && (batch as number) >= 1))
    throw new ArgumentError(expected("a positive integer or 'dynamic'", 'batch', batch));
  return { opset, batch: batch === 'dynamic' ? 'batch' : batch };
}

/** Graph construction helpers: unique value names, initializers, nodes. */
class Builder {
  readonly nodes: OnnxNode[] = [];
  readonly initializers: OnnxTensor[] = [];
  #names = new Set<string>();
  #counter = 0;

  #unique(base: string): string {
    let name = base;
    while (this.#names.has(name)) name = `${base}_${++this.#counter}`;
    this.#names.add(name);
    return name;
  }

  float(name: string, dims: readonly number[], data: Float32Array): string {
    const n = this.#unique(name);
    this.initializers.push({ name: n, dataType: 'FLOAT', dims, raw: float32LE(data) });
    return n;
  }

  int64(name: string, dims: readonly number[], values: readonly number[]): string {
    const n = this.#unique(name);
    const raw = new Uint8Array(8 * values.length);
    const view = new DataView(raw.buffer);
    values.forEach((v, i) => view.setBigInt64(8 * i, BigInt(v), true));
    this.initializers.push({ name: n, dataType: 'INT64', dims, raw });
    return n;
  }

  /** Adds a node with one output named `out` (made unique) and returns that name. */
  op(opType: string, inputs: readonly string[], out: string, attributes: OnnxAttribute[] = []): string {
    const output = this.#unique(out);
    this.nodes.push({ opType, inputs, outputs: [output], name: `${output}/${opType}`, attributes });
    return output;
  }
}

const isLittleEndian = endianness() === 'LE';

/** float32 values as little-endian bytes (a view on little-endian hosts, else a swapped copy). */
function float32LE(data: Float32Array): Uint8Array {
  if (isLittleEndian) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint8Array(data.byteLength);
  const view = new DataView(out.buffer);
  for (let i = 0; i < data.length; i++) view.setFloat32(4 * i, data[i], true);
  return out;
}

/** W [rows, cols] → Wᵀ [cols, rows]. */
function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c];
  return out;
}

function buildRope(model: ViT, options: OnnxExportOptions): { chunks: Uint8Array[]; byteLength: number } {
  const { opset, batch } = checkOptions(options);
  if (!model || typeof model !== 'object' || typeof (model as ViT).parameters !== 'function')
    throw new ArgumentError(expected('a ViT', 'model', model));
  const config = model.config; // throws DisposedError for a disposed model
  if (config.adapter !== null || model.parameters().some((p) => p.role === 'adapter'))
    throw new ArgumentError(
      `cannot export a ViT that still has adapters (placement '${config.adapter?.placement ?? '?'}') to ONNX: ` +
        'call model.fold() first. Folding merges every adapter into the qkv / fc1 weights without changing ' +
        'any output, in place; to keep the adapters, fold a copy (ViT.create(config), loadStateDict(model.stateDict()), fold()).',
    );

  const { imageSize: S, patchSize: P, width: D, depth, heads: H, mlpHidden: M, numClasses: C } = config;
  const Dh = D / H;
  const N = (S / P) ** 2;
  const T = N + 1;
  const eps = config.layerNormEps;

  const shapes = new Map(model.parameters().map((p) => [p.name, p.shape]));
  const param = (name: string, shape: readonly number[]): Float32Array => {
    const got = shapes.get(name);
    if (!got || got.length !== shape.length || got.some((d, i) => d !== shape[i]))
      throw new RepAdapterError(
        `internal: expected parameter ${name} of shape [${shape.join(', ')}], got ${got ? `[${got.join(', ')}]` : 'none'}`,
      );
    return model.param(name);
  };

  const b = new Builder();
  const ints = (name: string, value: readonly number[]): OnnxAttribute => ({ name, type: 'ints', value });
  const int = (name: string, value: number): OnnxAttribute => ({ name, type: 'int', value });
  const float = (name: string, value: number): OnnxAttribute => ({ name, type: 'float', value });

  const weight = (name: string, shape: readonly number[]) => b.float(name, shape, param(name, shape));
  /** A linear layer y = x Wᵀ + c with W [out, in] stored as Wᵀ [in, out]. */
  const linear = (x: string, prefix: string, inF: number, outF: number, out: string): string => {
    const wt = b.float(`${prefix}.weight.T`, [inF, outF], transpose(param(`${prefix}.weight`, [outF, inF]), outF, inF));
    const bias = weight(`${prefix}.bias`, [outF]);
    return b.op('Add', [b.op('MatMul', [x, wt], `${out}.matmul`), bias], out);
  };
  const layerNorm = (x: string, prefix: string, out: string): string =>
    b.op('LayerNormalization', [x, weight(`${prefix}.weight`, [D]), weight(`${prefix}.bias`, [D])], out, [
      int('axis', -1),
      float('epsilon', eps),
    ]);

  // constants
  const scalar = (name: string, v: number) => b.float(name, [], Float32Array.of(v));
  const idx = [0, 1, 2].map((i) => b.int64(`const.index${i}`, [], [i]));
  const scale = scalar('const.attn_scale', Dh ** -0.5);
  const sqrt2 = scalar('const.sqrt2', Math.SQRT2);
  const one = scalar('const.one', 1);
  const half = scalar('const.half', 0.5);
  const qkvShape = b.int64('const.qkv_shape', [5], [0, 0, 3, H, Dh]);
  const mergeShape = b.int64('const.merge_shape', [3], [0, 0, D]);

  // patch embedding + cls token + position embedding
  const conv = b.op(
    'Conv',
    [ONNX_INPUT, weight('patch_embed.proj.weight', [D, 3, P, P]), weight('patch_embed.proj.bias', [D])],
    'patch_embed.proj',
    [ints('kernel_shape', [P, P]), ints('strides', [P, P]), ints('pads', [0, 0, 0, 0]), ints('dilations', [1, 1]), int('group', 1)],
  );
  const flat = b.op('Reshape', [conv, b.int64('const.flatten_shape', [3], [0, D, -1])], 'patch_embed.flatten');
  const tokens = b.op('Transpose', [flat], 'patch_embed.tokens', [ints('perm', [0, 2, 1])]);
  const batchDim = b.op('Shape', [ONNX_INPUT], 'batch_size', [int('start', 0), int('end', 1)]);
  const clsShape = b.op('Concat', [batchDim, b.int64('const.cls_tail', [2], [1, D])], 'cls_shape', [int('axis', 0)]);
  const cls = b.op('Expand', [weight('cls_token', [1, 1, D]), clsShape], 'cls_tokens');
  const seq = b.op('Concat', [cls, tokens], 'tokens', [int('axis', 1)]);
  let x = b.op('Add', [seq, weight('pos_embed', [1, T, D])], 'embed');

  for (let i = 0; i < depth; i++) {
    const p = `blocks.${i}`;
    // attention
    const h1 = layerNorm(x, `${p}.norm1`, `${p}.norm1`);
    const qkv = linear(h1, `${p}.attn.qkv`, D, 3 * D, `${p}.attn.qkv`);
    const split = b.op(
      'Transpose',
      [b.op('Reshape', [qkv, qkvShape], `${p}.attn.qkv_heads`)],
      `${p}.attn.qkv_t`,
      [ints('perm', [2, 0, 3, 1, 4])],
    );
    const [q, k, v] = ['q', 'k', 'v'].map((n, j) => b.op('Gather', [split, idx[j]], `${p}.attn.${n}`, [int('axis', 0)]));
    const kt = b.op('Transpose', [k], `${p}.attn.k_t`, [ints('perm', [0, 1, 3, 2])]);
    const logits = b.op('Mul', [b.op('MatMul', [q, kt], `${p}.attn.qk`), scale], `${p}.attn.scores`);
    const attn = b.op('Softmax', [logits], `${p}.attn.softmax`, [int('axis', -1)]);
    const ctx = b.op('MatMul', [attn, v], `${p}.attn.context`);
    const merged = b.op(
      'Reshape',
      [b.op('Transpose', [ctx], `${p}.attn.context_t`, [ints('perm', [0, 2, 1, 3])]), mergeShape],
      `${p}.attn.merged`,
    );
    x = b.op('Add', [x, linear(merged, `${p}.attn.proj`, D, D, `${p}.attn.proj`)], `${p}.residual1`);
    // MLP
    const h2 = layerNorm(x, `${p}.norm2`, `${p}.norm2`);
    const f1 = linear(h2, `${p}.mlp.fc1`, D, M, `${p}.mlp.fc1`);
    const erf = b.op('Erf', [b.op('Div', [f1, sqrt2], `${p}.mlp.gelu_scaled`)], `${p}.mlp.gelu_erf`);
    const gate = b.op('Add', [erf, one], `${p}.mlp.gelu_gate`);
    const act = b.op('Mul', [b.op('Mul', [f1, half], `${p}.mlp.gelu_half`), gate], `${p}.mlp.gelu`);
    x = b.op('Add', [x, linear(act, `${p}.mlp.fc2`, M, D, `${p}.mlp.fc2`)], `${p}.residual2`);
  }

  const normed = layerNorm(x, 'norm', 'norm');
  const pooled = b.op('Gather', [normed, idx[0]], 'pooled', [int('axis', 1)]);
  b.nodes.push({
    opType: 'Gemm',
    inputs: [pooled, weight('head.weight', [C, D]), weight('head.bias', [C])],
    outputs: [ONNX_OUTPUT],
    name: `${ONNX_OUTPUT}/Gemm`,
    attributes: [int('transB', 1)],
  });

  const onnx: OnnxModel = {
    irVersion: IR_VERSION_OF_OPSET[opset],
    opsetImports: [{ domain: '', version: opset }],
    producerName: 'repadapter',
    docString: 'A plain ViT (timm VisionTransformer, class-token pooling) exported by repadapter.',
    graph: {
      name: 'vit',
      nodes: b.nodes,
      initializers: b.initializers,
      inputs: [{ name: ONNX_INPUT, elemType: 'FLOAT', shape: [batch, 3, S, S] }],
      outputs: [{ name: ONNX_OUTPUT, elemType: 'FLOAT', shape: [batch, C] }],
    },
    metadata: { 'repadapter.config': JSON.stringify(config) },
  };
  const rope = encodeModel(onnx);
  if (rope.byteLength > PROTOBUF_MAX_BYTES)
    throw new ArgumentError(
      `the ONNX model would take ${(rope.byteLength / 2 ** 30).toFixed(2)} GiB, over protobuf's 2 GiB limit ` +
        'for one file; ONNX external data is not supported by this exporter',
    );
  return rope;
}

