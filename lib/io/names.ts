/**
 * Name maps from the pretrained-weight layouts people download to our (timm's) parameter names
 * and tensor layouts, with every transpose and the q/k/v join done as timm does it
 * (`timm.models.vision_transformer._load_weights` for Google's .npz, `checkpoint_filter_fn` for
 * timm checkpoints).
 *
 * Layouts, detected from the key names:
 *
 * - **google**: Google's ViT .npz (google-research/vision_transformer, AugReg, big_vision).
 *   Optional key prefix `opt/target/`, `params/` or `params/img/` (as timm accepts).
 *     embedding/kernel [p,p,3,D] (HWIO)             → patch_embed.proj.weight [D,3,p,p] (OIHW)
 *     embedding/bias, cls [1,1,D]                   → patch_embed.proj.bias, cls_token
 *     Transformer/posembed_input/pos_embedding [1,N,D] (or big_vision's pos_embedding at the
 *       root, [1,g²,D] without a class-token row: a zero row is put in front, which is exactly
 *       big_vision's "add to the patches, then prepend cls")  → pos_embed
 *     Transformer/encoderblock_{i}/ (or one stacked Transformer/encoderblock/ for scanned
 *       big_vision checkpoints, leading axis = block)
 *       LayerNorm_0/{scale,bias}                    → blocks.i.norm1
 *       MultiHeadDotProductAttention_1/{query,key,value}/kernel [D,H,Dh] → flatten(1).T, joined
 *         in q,k,v order → attn.qkv.weight [3D,D]; …/bias [H,Dh] → attn.qkv.bias [3D]
 *       MultiHeadDotProductAttention_1/out/kernel [H,Dh,D] → attn.proj.weight [D,D]; out/bias
 *       LayerNorm_2                                 → norm2
 *       MlpBlock_3/Dense_0, Dense_1 {kernel [in,out] → .T, bias} → mlp.fc1, mlp.fc2
 *       (flax linen numbers sub-modules per type: MultiHeadDotProductAttention_0, LayerNorm_1,
 *       MlpBlock_0; the original release and AugReg use the pre-linen numbering above. We
 *       probe block 0 for which one the file uses.)
 *     Transformer/encoder_norm/{scale,bias}         → norm
 *     head/{kernel [D,C] → .T, bias}                → head
 *     pre_logits/* (the in21k representation layer): not used, reported; a head trained on top
 *       of it cannot be used without it, so the head is then always re-initialised.
 * - **timm**: timm's own names (identity), with a common prefix such as `module.` or `model.`
 *   stripped; `pre_logits.*` is reported and ignored, anything else we lack (fc_norm, reg_token,
 *   layer-scale gammas, …) is unexpected.
 * - **huggingface**: transformers' ViTModel / ViTForImageClassification:
 *     vit.embeddings.{cls_token, position_embeddings, patch_embeddings.projection.*}
 *     vit.encoder.layer.{i}.layernorm_before → norm1, attention.attention.{query,key,value}
 *       (joined into qkv), attention.output.dense → attn.proj, layernorm_after → norm2,
 *       intermediate.dense → mlp.fc1, output.dense → mlp.fc2
 *     vit.layernorm → norm, classifier → head; vit.pooler.* and mask_token are reported, ignored.
 *   (transformers' ViT uses LayerNorm eps 1e-12, timm 1e-6: set layerNormEps to match.)
 */
import type { MisshapedTensor } from '../errors.js';
import { squareSide } from './resample.js';

export type WeightsLayout = 'google' | 'timm' | 'huggingface';

/** A tensor of a weights file, decoded to float32 on demand. */
export interface SourceTensor {
  readonly shape: readonly number[];
  float32(): Float32Array;
}

/** What the layout maps into: the model's architecture and parameters. */
export interface MappingTarget {
  config: {
    width: number;
    depth: number;
    heads: number;
    patchSize: number;
    mlpHidden: number;
  };
  params: readonly { name: string; shape: readonly number[]; role: string }[];
}

export interface LayoutInfo {
  layout: WeightsLayout;
  /** The key prefix the names start with ('' when none). */
  prefix: string;
  /** Human-readable description for reports and errors. */
  description: string;
}

export interface MappedTensor {
  shape: number[];
  data: Float32Array;
  /** The file keys it came from. */
  sources: string[];
}

export interface Mapping {
  layout: LayoutInfo;
  /**
   * Tensors under our names, in our layouts. `pos_embed` always has a class-token row but may
   * have another grid than the model; `head.*` may have another class count. Other tensors have
   * the model's shapes (anything else is in `misshaped`).
   */
  tensors: Map<string, MappedTensor>;
  /** File keys we know and deliberately do not use (pre_logits, HF's pooler, optimizer state). */
  ignored: string[];
  /** File keys that map to nothing in the model. */
  unknown: string[];
  /** Required keys the file lacks, as `file key` (or `file key (for our name)`). */
  missing: string[];
  /** File tensors whose shape does not fit the model, under their file names and shapes. */
  misshaped: MisshapedTensor[];
  /** The file's head sits on a representation (pre_logits) layer this model does not have. */
  headNeedsPreLogits: boolean;
  /** Things done on the way that a user should know about. */
  notes: string[];
}

const GOOGLE_PREFIXES = ['', 'opt/target/', 'params/', 'params/img/'];

/** Recognises the layout of a weights file from its keys, or returns null. */
export function detectLayout(keys: Iterable<string>): LayoutInfo | null {
  const all = [...keys];
  const set = new Set(all);
  for (const prefix of GOOGLE_PREFIXES)
    if (set.has(`${prefix}embedding/kernel`)) {
      const bigVision = prefix.startsWith('params/') || set.has(`${prefix}pos_embedding`);
      const scanned = set.has(`${prefix}Transformer/encoderblock/LayerNorm_0/scale`);
      return {
        layout: 'google',
        prefix,
        description: `Google ViT .npz${bigVision ? ' (big_vision)' : ''}${scanned ? ' (scanned blocks)' : ''}${prefix ? ` under ${prefix}` : ''}`,
      };
    }
  const hf = all.find((k) => k.endsWith('embeddings.patch_embeddings.projection.weight'));
  if (hf !== undefined) {
    const prefix = hf.slice(0, -'embeddings.patch_embeddings.projection.weight'.length);
    if (prefix === '' || prefix.endsWith('.'))
      return { layout: 'huggingface', prefix, description: `Hugging Face transformers ViT${prefix ? ` under ${prefix}` : ''}` };
  }
  const timm = all.find((k) => k.endsWith('patch_embed.proj.weight'));
  if (timm !== undefined) {
    const prefix = timm.slice(0, -'patch_embed.proj.weight'.length);
    if (prefix === '' || prefix.endsWith('.'))
      return { layout: 'timm', prefix, description: `timm ViT${prefix ? ` under ${prefix}` : ''}` };
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Layout transforms
// ---------------------------------------------------------------------------------------------

/** [rows, cols] → [cols, rows]. */
export function transpose2d(src: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = src[r * cols + c];
  return out;
}

/** Flax conv kernel [kh, kw, in, out] (HWIO) → PyTorch [out, in, kh, kw] (OIHW). */
export function hwioToOihw(src: Float32Array, kh: number, kw: number, cin: number, cout: number): Float32Array {
  const out = new Float32Array(src.length);
  for (let h = 0; h < kh; h++)
    for (let w = 0; w < kw; w++)
      for (let i = 0; i < cin; i++)
        for (let o = 0; o < cout; o++) out[((o * cin + i) * kh + h) * kw + w] = src[((h * kw + w) * cin + i) * cout + o];
  return out;
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Reads source tensors for one mapping, recording what is used, missing or misshaped. */
class Reader {
  readonly used = new Set<string>();
  readonly missing: string[] = [];
  readonly misshaped: MisshapedTensor[] = [];
  readonly tensors = new Map<string, MappedTensor>();
  private readonly failed = new Set<string>();
  private readonly stacks = new Map<string, Float32Array | null>();

  constructor(
    private readonly src: ReadonlyMap<string, SourceTensor>,
    private readonly prefix: string,
  ) {}

  has(key: string): boolean {
    return this.src.has(this.prefix + key);
  }

  /**
   * The values of `prefix + key` if it has shape `shape` (dimensions listed in `free` may be
   * anything); records it missing (for `target`) or misshaped otherwise.
   */
  take(key: string, shape: readonly number[], target: string, free: readonly number[] = []): Float32Array | undefined {
    const full = this.prefix + key;
    const t = this.src.get(full);
    if (!t) {
      if (!this.failed.has(full)) this.missing.push(`${full} (for ${target})`);
      this.failed.add(full);
      return undefined;
    }
    this.used.add(full);
    const ok = t.shape.length === shape.length && shape.every((d, i) => free.includes(i) || t.shape[i] === d);
    if (!ok) {
      if (!this.failed.has(full)) this.misshaped.push({ name: full, expected: [...shape], got: [...t.shape] });
      this.failed.add(full);
      return undefined;
    }
    return t.float32();
  }

  /** Block `index` of a stacked (scanned) array of shape [depth, ...shape]. */
  slice(key: string, depth: number, shape: readonly number[], index: number, target: string): Float32Array | undefined {
    const full = this.prefix + key;
    let all = this.stacks.get(full);
    if (all === undefined) {
      all = this.take(key, [depth, ...shape], target) ?? null;
      this.stacks.set(full, all);
    }
    if (!all) return undefined;
    const n = shape.reduce((a, b) => a * b, 1);
    return all.subarray(index * n, (index + 1) * n);
  }

  emit(target: string, shape: number[], data: Float32Array | undefined, sources: string[]): void {
    if (data) this.tensors.set(target, { shape, data, sources: sources.map((s) => this.prefix + s) });
  }

  /** Every source value present (all-or-nothing for joined tensors). */
  static all<T>(xs: (T | undefined)[]): T[] | undefined {
    return xs.every((x) => x !== undefined) ? (xs as T[]) : undefined;
  }
}

/**
 * Maps a weights file's tensors to our names and layouts. Pure: reads the sources, returns new
 * arrays, changes nothing.
 */
export function mapToTimm(source: ReadonlyMap<string, SourceTensor>, target: MappingTarget, layout: LayoutInfo): Mapping {
  switch (layout.layout) {
    case 'google':
      return mapGoogle(source, target, layout);
    case 'huggingface':
      return mapHuggingFace(source, target, layout);
    case 'timm':
      return mapTimm(source, target, layout);
  }
}

function finish(
  reader: Reader,
  source: ReadonlyMap<string, SourceTensor>,
  layout: LayoutInfo,
  isIgnorable: (key: string) => boolean,
  notes: string[],
): Mapping {
  const ignored: string[] = [];
  const unknown: string[] = [];
  for (const key of source.keys()) if (!reader.used.has(key)) (isIgnorable(key) ? ignored : unknown).push(key);
  return {
    layout,
    tensors: reader.tensors,
    ignored,
    unknown,
    missing: reader.missing,
    misshaped: reader.misshaped,
    headNeedsPreLogits: false,
    notes,
  };
}

/** The pos_embed table in our layout: a class-token row in front when the file has none. */
function posEmbedWithClassRow(data: Float32Array, tokens: number, D: number, notes: string[], key: string): Float32Array {
  if (squareSide(tokens - 1) >= 0) return data;
  if (squareSide(tokens) >= 0) {
    notes.push(`${key} has no class-token row (the class token gets no position embedding); a zero row was put in front`);
    const out = new Float32Array((tokens + 1) * D);
    out.set(data, D);
    return out;
  }
  return data; // not a square grid either way: pretrained.ts reports it
}

function mapGoogle(source: ReadonlyMap<string, SourceTensor>, target: MappingTarget, layout: LayoutInfo): Mapping {
  const { width: D, depth, heads: H, patchSize: p, mlpHidden: M } = target.config;
  const Dh = D / H;
  const r = new Reader(source, layout.prefix);
  const notes: string[] = [];

  r.emit('patch_embed.proj.weight', [D, 3, p, p], mapOpt(r.take('embedding/kernel', [p, p, 3, D], 'patch_embed.proj.weight'), (k) => hwioToOihw(k, p, p, 3, D)), ['embedding/kernel']);
  r.emit('patch_embed.proj.bias', [D], r.take('embedding/bias', [D], 'patch_embed.proj.bias'), ['embedding/bias']);
  r.emit('cls_token', [1, 1, D], r.take('cls', [1, 1, D], 'cls_token'), ['cls']);
  const posKey = r.has('pos_embedding') || (layout.prefix.startsWith('params/') && !r.has('Transformer/posembed_input/pos_embedding'))
    ? 'pos_embedding'
    : 'Transformer/posembed_input/pos_embedding';
  const pos = r.take(posKey, [1, dim(target, 'pos_embed', 1), D], 'pos_embed', [1]);
  if (pos) {
    const tokens = source.get(layout.prefix + posKey)!.shape[1];
    const data = posEmbedWithClassRow(pos, tokens, D, notes, layout.prefix + posKey);
    r.emit('pos_embed', [1, data.length / D, D], data, [posKey]);
  }
  r.emit('norm.weight', [D], r.take('Transformer/encoder_norm/scale', [D], 'norm.weight'), ['Transformer/encoder_norm/scale']);
  r.emit('norm.bias', [D], r.take('Transformer/encoder_norm/bias', [D], 'norm.bias'), ['Transformer/encoder_norm/bias']);
  if (r.has('head/kernel') || r.has('head/bias')) {
    const k = r.take('head/kernel', [D, dim(target, 'head.weight', 0)], 'head.weight', [1]);
    const C = source.get(layout.prefix + 'head/kernel')?.shape[1] ?? dim(target, 'head.weight', 0);
    const b = r.take('head/bias', [C], 'head.bias');
    if (k && b) {
      r.emit('head.weight', [C, D], transpose2d(k, D, C), ['head/kernel']);
      r.emit('head.bias', [C], b, ['head/bias']);
    }
  }

  const scanned = r.has('Transformer/encoderblock/LayerNorm_0/scale');
  const b0 = scanned ? 'Transformer/encoderblock/' : 'Transformer/encoderblock_0/';
  const bigVision = layout.prefix.startsWith('params/') || posKey === 'pos_embedding' || scanned;
  const linen = r.has(`${b0}MultiHeadDotProductAttention_1/query/kernel`)
    ? false
    : r.has(`${b0}MultiHeadDotProductAttention_0/query/kernel`) || bigVision;
  const [mha, ln2, mlp] = linen
    ? ['MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0']
    : ['MultiHeadDotProductAttention_1', 'LayerNorm_2', 'MlpBlock_3'];
  if (scanned) notes.push(`blocks are stacked (scanned) in Transformer/encoderblock/; ${linen ? 'flax linen' : 'pre-linen'} numbering`);
  else notes.push(`${linen ? 'flax linen' : 'pre-linen'} sub-module numbering (${mha}, ${ln2}, ${mlp})`);

  for (let i = 0; i < depth; i++) {
    const bp = scanned ? 'Transformer/encoderblock/' : `Transformer/encoderblock_${i}/`;
    const t = `blocks.${i}.`;
    const get = (key: string, shape: number[], tgt: string) =>
      scanned ? r.slice(bp + key, depth, shape, i, t + tgt) : r.take(bp + key, shape, t + tgt);
    const src = (key: string) => bp + key;

    r.emit(`${t}norm1.weight`, [D], get('LayerNorm_0/scale', [D], 'norm1.weight'), [src('LayerNorm_0/scale')]);
    r.emit(`${t}norm1.bias`, [D], get('LayerNorm_0/bias', [D], 'norm1.bias'), [src('LayerNorm_0/bias')]);
    const qkvNames = ['query', 'key', 'value'];
    const kernels = Reader.all(qkvNames.map((n) => get(`${mha}/${n}/kernel`, [D, H, Dh], 'attn.qkv.weight')));
    const biases = Reader.all(qkvNames.map((n) => get(`${mha}/${n}/bias`, [H, Dh], 'attn.qkv.bias')));
    // kernel [D_in, H, Dh] → flatten(1) [D_in, D] → .T [D_out, D_in]; q, k, v stacked along rows.
    r.emit(`${t}attn.qkv.weight`, [3 * D, D], kernels && concat(kernels.map((k) => transpose2d(k, D, D))),
      qkvNames.map((n) => src(`${mha}/${n}/kernel`)));
    r.emit(`${t}attn.qkv.bias`, [3 * D], biases && concat(biases), qkvNames.map((n) => src(`${mha}/${n}/bias`)));
    // out kernel [H, Dh, D_out] = [D_in, D_out] → .T
    r.emit(`${t}attn.proj.weight`, [D, D], mapOpt(get(`${mha}/out/kernel`, [H, Dh, D], 'attn.proj.weight'), (k) => transpose2d(k, D, D)),
      [src(`${mha}/out/kernel`)]);
    r.emit(`${t}attn.proj.bias`, [D], get(`${mha}/out/bias`, [D], 'attn.proj.bias'), [src(`${mha}/out/bias`)]);
    r.emit(`${t}norm2.weight`, [D], get(`${ln2}/scale`, [D], 'norm2.weight'), [src(`${ln2}/scale`)]);
    r.emit(`${t}norm2.bias`, [D], get(`${ln2}/bias`, [D], 'norm2.bias'), [src(`${ln2}/bias`)]);
    r.emit(`${t}mlp.fc1.weight`, [M, D], mapOpt(get(`${mlp}/Dense_0/kernel`, [D, M], 'mlp.fc1.weight'), (k) => transpose2d(k, D, M)),
      [src(`${mlp}/Dense_0/kernel`)]);
    r.emit(`${t}mlp.fc1.bias`, [M], get(`${mlp}/Dense_0/bias`, [M], 'mlp.fc1.bias'), [src(`${mlp}/Dense_0/bias`)]);
    r.emit(`${t}mlp.fc2.weight`, [D, M], mapOpt(get(`${mlp}/Dense_1/kernel`, [M, D], 'mlp.fc2.weight'), (k) => transpose2d(k, M, D)),
      [src(`${mlp}/Dense_1/kernel`)]);
    r.emit(`${t}mlp.fc2.bias`, [D], get(`${mlp}/Dense_1/bias`, [D], 'mlp.fc2.bias'), [src(`${mlp}/Dense_1/bias`)]);
  }

  const pre = layout.prefix;
  const optState = pre.startsWith('opt/') ? 'opt/' : null;
  const mapping = finish(r, source, layout, (key) =>
    key.startsWith(`${pre}pre_logits/`) || (optState !== null && key.startsWith(optState) && !key.startsWith(pre)), notes);
  mapping.headNeedsPreLogits = source.has(`${pre}pre_logits/kernel`);
  return mapping;
}

function mapHuggingFace(source: ReadonlyMap<string, SourceTensor>, target: MappingTarget, layout: LayoutInfo): Mapping {
  const { width: D, depth, patchSize: p, mlpHidden: M } = target.config;
  const r = new Reader(source, '');
  const pre = layout.prefix; // 'vit.' for ViTForImageClassification, '' for ViTModel
  const root = pre.endsWith('vit.') ? pre.slice(0, -4) : pre;
  const notes: string[] = ["Hugging Face's ViT uses LayerNorm eps 1e-12 (timm: 1e-6); the model keeps its own layerNormEps"];
  const one = (ours: string, theirs: string, shape: number[]) => r.emit(ours, shape, r.take(theirs, shape, ours), [theirs]);

  one('cls_token', `${pre}embeddings.cls_token`, [1, 1, D]);
  const posKey = `${pre}embeddings.position_embeddings`;
  const pos = r.take(posKey, [1, dim(target, 'pos_embed', 1), D], 'pos_embed', [1]);
  if (pos) r.emit('pos_embed', [1, pos.length / D, D], posEmbedWithClassRow(pos, pos.length / D, D, notes, posKey), [posKey]);
  one('patch_embed.proj.weight', `${pre}embeddings.patch_embeddings.projection.weight`, [D, 3, p, p]);
  one('patch_embed.proj.bias', `${pre}embeddings.patch_embeddings.projection.bias`, [D]);
  for (let i = 0; i < depth; i++) {
    const t = `blocks.${i}.`;
    const L = `${pre}encoder.layer.${i}.`;
    for (const kind of ['weight', 'bias'] as const) {
      const vec = kind === 'bias';
      one(`${t}norm1.${kind}`, `${L}layernorm_before.${kind}`, [D]);
      const qkvKeys = ['query', 'key', 'value'].map((n) => `${L}attention.attention.${n}.${kind}`);
      const parts = Reader.all(qkvKeys.map((k) => r.take(k, vec ? [D] : [D, D], `${t}attn.qkv.${kind}`)));
      r.emit(`${t}attn.qkv.${kind}`, vec ? [3 * D] : [3 * D, D], parts && concat(parts), qkvKeys);
      one(`${t}attn.proj.${kind}`, `${L}attention.output.dense.${kind}`, vec ? [D] : [D, D]);
      one(`${t}norm2.${kind}`, `${L}layernorm_after.${kind}`, [D]);
      one(`${t}mlp.fc1.${kind}`, `${L}intermediate.dense.${kind}`, vec ? [M] : [M, D]);
      one(`${t}mlp.fc2.${kind}`, `${L}output.dense.${kind}`, vec ? [D] : [D, M]);
    }
  }
  one('norm.weight', `${pre}layernorm.weight`, [D]);
  one('norm.bias', `${pre}layernorm.bias`, [D]);
  const headW = `${root}classifier.weight`;
  if (source.has(headW) || source.has(`${root}classifier.bias`)) {
    const C = source.get(headW)?.shape[0] ?? dim(target, 'head.weight', 0);
    const w = r.take(headW, [C, D], 'head.weight');
    const b = r.take(`${root}classifier.bias`, [C], 'head.bias');
    if (w && b) {
      r.emit('head.weight', [C, D], w, [headW]);
      r.emit('head.bias', [C], b, [`${root}classifier.bias`]);
    }
  }
  return finish(r, source, layout, (key) => key.startsWith(`${pre}pooler.`) || key === `${pre}embeddings.mask_token`, notes);
}

function mapTimm(source: ReadonlyMap<string, SourceTensor>, target: MappingTarget, layout: LayoutInfo): Mapping {
  const r = new Reader(source, layout.prefix);
  const notes: string[] = [];
  const D = target.config.width;
  for (const p of target.params) {
    if (!r.has(p.name)) {
      // Adapters and the head are optional; the rest is required.
      if (p.role !== 'adapter' && p.role !== 'head') r.missing.push(layout.prefix + p.name);
      continue;
    }
    if (p.name === 'pos_embed') {
      const tokens = source.get(layout.prefix + p.name)!.shape[1] ?? 0;
      const data = r.take(p.name, [1, p.shape[1], D], p.name, [1]);
      if (data) r.emit(p.name, [1, data.length / D, D], posEmbedWithClassRow(data, tokens, D, notes, layout.prefix + p.name), [p.name]);
    } else if (p.role === 'head') {
      const t = source.get(layout.prefix + p.name)!;
      const data = r.take(p.name, p.shape, p.name, [0]);
      if (data) r.emit(p.name, [...t.shape], data, [p.name]);
    } else {
      r.emit(p.name, [...p.shape], r.take(p.name, p.shape, p.name), [p.name]);
    }
  }
  const pre = layout.prefix;
  const mapping = finish(r, source, layout, (key) => key.startsWith(`${pre}pre_logits.`), notes);
  mapping.headNeedsPreLogits = [...source.keys()].some((k) => k.startsWith(`${pre}pre_logits.`));
  return mapping;
}

/** The model's own size of a free dimension, shown in messages (pos tokens, head classes). */
function dim(target: MappingTarget, name: string, axis: number): number {
  return target.params.find((p) => p.name === name)?.shape[axis] ?? 0;
}

function mapOpt<T, U>(x: T | undefined, f: (x: T) => U): U | undefined {
  return x === undefined ? undefined : f(x);
}
