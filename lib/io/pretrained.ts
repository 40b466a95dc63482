/**
 * Loading pretrained backbones: Google's .npz (original ViT, AugReg, big_vision), timm and
 * Hugging Face safetensors, into a ViT with our (timm's) names.
 *
 * What happens, in order, before anything in the model changes:
 *
 * 1. the file is read and validated (zip / .npy / safetensors rules; a FormatError names the
 *    file and the member);
 * 2. its layout is recognised from the key names and mapped to ours (see names.ts);
 * 3. a position embedding of another grid is resampled to the model's, as timm would for that
 *    kind of file (Google .npz: bilinear, no antialias — timm's `_load_weights`; timm and
 *    Hugging Face checkpoints: bicubic with antialias — timm's `checkpoint_filter_fn`), with the
 *    class-token row kept aside;
 * 4. the head: the file's is used only when it fits (same class count, no pre_logits layer under
 *    it) and `newHead` is not set; otherwise the model's freshly initialised head stays and is
 *    reported as re-initialised;
 * 5. every problem — missing backbone tensors, unknown keys, wrong shapes — is collected and
 *    thrown at once as one StateDictError.
 *
 * Only then are the tensors written into the model (all of them, or, on any error, none).
 * Adapters are new: they keep their initialisation (the identity) unless the file has them.
 */
import { open } from 'node:fs/promises';

import { FormatError, StateDictError, type MisshapedTensor } from '../errors.js';
import type { ViT } from '../vit.js';
import { detectLayout, mapToTimm, type LayoutInfo, type SourceTensor, type WeightsLayout } from './names.js';
import { npyToFloat32, readNpz } from './npz.js';
import { resamplePosEmbed, squareSide, type Interpolation } from './resample.js';
import { readSafetensors, toFloat32 } from './safetensors.js';

export type { WeightsLayout } from './names.js';

export interface LoadPretrainedOptions {
  /** Use this layout instead of recognising it from the key names. */
  layout?: WeightsLayout;
  /** Keep the model's freshly initialised head even when the file's head fits. */
  newHead?: boolean;
  /**
   * true (default): file keys that map to nothing, and backbone tensors the file lacks, are
   * errors. false: they are reported (unexpected / missing) and the model keeps its values.
   * Wrong shapes are always errors.
   */
  strict?: boolean;
  /** How a position embedding of another grid is resampled (default: as timm does for the file's layout). */
  posEmbed?: { interpolation?: Interpolation; antialias?: boolean };
  /** Check and plan everything, but change nothing in the model. */
  dryRun?: boolean;
}

export interface ResampledTensor {
  name: string;
  from: [number, number];
  to: [number, number];
  interpolation: Interpolation;
  antialias: boolean;
}

export interface PretrainedReport {
  file: string;
  layout: WeightsLayout;
  /** The layout in words (prefix, variant). */
  description: string;
  /** Model parameters set from the file. */
  loaded: string[];
  /** Required file keys the file lacks (only with strict: false; else they are an error). */
  missing: string[];
  /** File keys not loaded: deliberately ignored ones (pre_logits, a head that does not fit, …) and, without strict, unknown ones. */
  unexpected: string[];
  /** Always empty on success (wrong shapes are an error); kept for the report's symmetry with StateDictError. */
  misshaped: MisshapedTensor[];
  /** Tensors resampled to the model's grid. */
  resampled: ResampledTensor[];
  /** Model parameters that keep their fresh initialisation in place of the file's (the head). */
  reinitialised: string[];
  /** Model parameters the file has nothing for, left as initialised (the adapters). */
  kept: string[];
  /** Things done on the way worth knowing (layout variant, why the head was re-initialised, …). */
  notes: string[];
}

type Entries = Map<string, { shape: readonly number[]; data: Float32Array }>;

/** The tensors of a .npz or .safetensors file (recognised by content), decoded on demand. */
export async function readWeights(path: string): Promise<{ container: 'npz' | 'safetensors'; tensors: Map<string, SourceTensor> }> {
  const head = new Uint8Array(4);
  const fh = await open(path, 'r');
  try {
    await fh.read(head, 0, 4, 0);
  } finally {
    await fh.close();
  }
  const tensors = new Map<string, SourceTensor>();
  if (head[0] === 0x50 && head[1] === 0x4b && (head[2] === 3 || head[2] === 5)) {
    const npz = await readNpz(path);
    for (const [key, array] of npz.arrays) tensors.set(key, { shape: array.shape, float32: () => npyToFloat32(array) });
    return { container: 'npz', tensors };
  }
  if (head[0] === 0x80 && head[1] >= 2 && head[1] <= 5)
    throw new FormatError(`${path} is a pickled PyTorch checkpoint, which is not read (unpickling can run code); convert it to .safetensors`, { file: path });
  const file = await readSafetensors(path);
  for (const [key, entry] of file.tensors) tensors.set(key, { shape: entry.shape, float32: () => toFloat32(entry) });
  return { container: 'safetensors', tensors };
}

/**
 * Loads pretrained weights (Google .npz, timm or Hugging Face .safetensors) into `model`; see
 * the module comment. Returns what was done; throws a FormatError for a malformed file and one
 * StateDictError listing every mismatch, leaving the model unchanged.
 */
export async function loadPretrained(model: ViT, path: string, options: LoadPretrainedOptions = {}): Promise<PretrainedReport> {
  const { tensors } = await readWeights(path);
  const { entries, report } = planPretrained(model, tensors, path, options);
  if (!options.dryRun) model.loadStateDict(entries, { strict: false, context: `for ${path} (${report.description})` });
  return report;
}

/** The pure part of loadPretrained: what would be loaded, or the StateDictError. */
export function planPretrained(
  model: Pick<ViT, 'config' | 'parameters'>,
  tensors: ReadonlyMap<string, SourceTensor>,
  file: string,
  options: LoadPretrainedOptions = {},
): { entries: Entries; report: PretrainedReport } {
  const strict = options.strict ?? true;
  const config = model.config;
  const params = model.parameters();
  let layout: LayoutInfo | null = detectLayout(tensors.keys());
  if (options.layout && options.layout !== layout?.layout)
    layout = { layout: options.layout, prefix: '', description: `${options.layout} (as told)` };
  if (!layout) {
    const keys = [...tensors.keys()];
    throw new FormatError(
      `cannot tell which layout ${file} uses: expected Google ViT keys (embedding/kernel, …), timm names ` +
        `(patch_embed.proj.weight, …) or Hugging Face names (vit.embeddings.patch_embeddings.projection.weight, …); ` +
        `the file has ${keys.length} tensors${keys.length ? `: ${keys.slice(0, 5).map((k) => JSON.stringify(k)).join(', ')}${keys.length > 5 ? ', …' : ''}` : ''}`,
      { file },
    );
  }
  const mapping = mapToTimm(tensors, { config, params }, layout);
  const notes = [...mapping.notes];
  const misshaped = [...mapping.misshaped];
  const unexpected = [...mapping.ignored];
  const reinitialised: string[] = [];
  const resampled: ResampledTensor[] = [];
  const mapped = mapping.tensors;
  const D = config.width;

  // The head.
  const head = params.filter((p) => p.role === 'head');
  const fileHead = mapped.get('head.weight');
  let reason: string | null = null;
  if (options.newHead) reason = 'a new head was asked for (newHead)';
  else if (!fileHead || !mapped.has('head.bias')) reason = 'the file has no head';
  else if (mapping.headNeedsPreLogits) reason = "the file's head sits on a pre_logits (representation) layer this model does not have";
  else if (fileHead.shape[0] !== config.numClasses)
    reason = `the file's head has ${fileHead.shape[0]} classes, the model ${config.numClasses}`;
  if (reason) {
    for (const p of head) {
      const t = mapped.get(p.name);
      if (t) unexpected.push(...t.sources);
      mapped.delete(p.name);
      reinitialised.push(p.name);
    }
    notes.push(`head re-initialised: ${reason}`);
  }

  // The position embedding.
  const pos = mapped.get('pos_embed');
  const grid = config.imageSize / config.patchSize;
  if (pos && pos.shape[1] !== 1 + grid * grid) {
    const side = squareSide(pos.shape[1] - 1);
    if (side < 1) {
      mapped.delete('pos_embed');
      const t = tensors.get(pos.sources[0]);
      misshaped.push({ name: pos.sources[0], expected: [1, 1 + grid * grid, D], got: [...(t?.shape ?? pos.shape)] });
    } else {
      const interpolation = options.posEmbed?.interpolation ?? (layout.layout === 'google' ? 'bilinear' : 'bicubic');
      const antialias = options.posEmbed?.antialias ?? layout.layout !== 'google';
      const data = resamplePosEmbed(pos.data, D, [side, side], [grid, grid], { interpolation, antialias, prefixTokens: 1 });
      mapped.set('pos_embed', { shape: [1, 1 + grid * grid, D], data, sources: pos.sources });
      resampled.push({ name: 'pos_embed', from: [side, side], to: [grid, grid], interpolation, antialias });
      notes.push(`pos_embed resampled from a ${side}×${side} grid to ${grid}×${grid} (${interpolation}${antialias ? ', antialias' : ''})`);
    }
  }

  // Everything else must have the model's shape.
  const known = new Map(params.map((p) => [p.name, p]));
  const entries: Entries = new Map();
  for (const [name, t] of mapped) {
    const p = known.get(name);
    if (!p) {
      unexpected.push(...t.sources);
      continue;
    }
    if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i]) || t.data.length !== t.shape.reduce((a, b) => a * b, 1)) {
      misshaped.push({ name: t.sources.length === 1 ? t.sources[0] : name, expected: [...p.shape], got: [...t.shape] });
      continue;
    }
    entries.set(name, { shape: p.shape, data: t.data });
  }
  const missing = [...mapping.missing];
  const unknown = mapping.unknown;
  if (misshaped.length || (strict && (missing.length || unknown.length)))
    throw new StateDictError({ missing, unexpected: unknown, misshaped }, { context: `for ${file} (${layout.description})` });
  unexpected.push(...unknown);

  const loaded = params.filter((p) => entries.has(p.name)).map((p) => p.name);
  const kept = params.filter((p) => !entries.has(p.name) && !reinitialised.includes(p.name)).map((p) => p.name);
  return {
    entries,
    report: {
      file,
      layout: layout.layout,
      description: layout.description,
      loaded,
      missing,
      unexpected,
      misshaped: [],
      resampled,
      reinitialised,
      kept,
      notes,
    },
  };
}
