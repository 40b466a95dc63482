/**
 * Official per-task adapter scale `s` for the 19 VTAB-1k tasks, as published by the authors of
 * RepAdapter ("Towards Efficient Visual Adaption via Structural Re-parameterization").
 *
 * Source: GitHub repository luogen1996/RepAdapter (files as of commit a7b33b74cb0c), one YAML file
 * per task and placement of the form `name: <task>\nclass_num: <n>\nscale: <s>`:
 *   - configs/repattn/<task>.yaml   -> placement 'attn'  (adapter before the attention block)
 *   - configs/repblock/<task>.yaml  -> placement 'block' (adapters before attention and MLP)
 * Task names are spelled as in those file names and in the task loop of scripts/exp.sh.
 * `classes` is the `class_num` of the task's YAML files (where both files exist they agree).
 * Every number below was copied from one of those files; nothing is interpolated.
 *
 * Not every task has a file for both placements: configs/repattn has no svhn.yaml, and
 * configs/repblock has none for cifar, clevr_dist, dmlab, oxford_flowers102, smallnorb_azi,
 * smallnorb_ele and sun397. For such a pair the official train.py does NOT fall back to a default
 * or search for a value: it calls get_config() (utils.py), which opens
 * `./configs/<method>/<task>.yaml` unconditionally, before it looks at `--scale`, so the run stops
 * with FileNotFoundError even when an explicit `--scale` is given. (Searching for s is a separate,
 * manual step: scripts/search_repattn.sh / search_repblock.sh train every task with s = 0.1, 0.5,
 * 1, 5 and 10 in turn.) officialScale() therefore refuses such pairs instead of inventing a value.
 */
import { ArgumentError, ConfigError, expected } from '../errors.js';

/** Where the adapters sit: 'attn' (RepAdapter_attn, configs/repattn) or 'block' (configs/repblock). */
export type AdapterPlacement = 'attn' | 'block';

/** One VTAB-1k task: its class count and the official scale for each placement that has one. */
export interface VtabTaskScales {
  readonly classes: number;
  readonly attn?: number;
  readonly block?: number;
}

/** Official scales and class counts for the 19 VTAB-1k tasks, keyed by the official task name. */
export const VTAB_TASK_SCALES: Readonly<Record<string, VtabTaskScales>> = Object.freeze({
  // Natural
  cifar: Object.freeze({ classes: 100, attn: 0.1 }),
  caltech101: Object.freeze({ classes: 102, attn: 10, block: 5 }),
  dtd: Object.freeze({ classes: 47, attn: 0.1, block: 1 }),
  oxford_flowers102: Object.freeze({ classes: 102, attn: 0.5 }),
  oxford_iiit_pet: Object.freeze({ classes: 37, attn: 0.5, block: 0.1 }),
  svhn: Object.freeze({ classes: 10, block: 10 }),
  sun397: Object.freeze({ classes: 397, attn: 0.1 }),
  // Specialized
  patch_camelyon: Object.freeze({ classes: 2, attn: 0.5, block: 1 }),
  eurosat: Object.freeze({ classes: 10, attn: 5, block: 1 }),
  resisc45: Object.freeze({ classes: 45, attn: 0.1, block: 5 }),
  diabetic_retinopathy: Object.freeze({ classes: 5, attn: 0.5, block: 0.1 }),
  // Structured
  clevr_count: Object.freeze({ classes: 8, attn: 1, block: 0.5 }),
  clevr_dist: Object.freeze({ classes: 6, attn: 0.1 }),
  dmlab: Object.freeze({ classes: 6, attn: 5 }),
  kitti: Object.freeze({ classes: 4, attn: 1, block: 5 }),
  dsprites_loc: Object.freeze({ classes: 16, attn: 10, block: 5 }),
  dsprites_ori: Object.freeze({ classes: 16, attn: 5, block: 0.1 }),
  smallnorb_azi: Object.freeze({ classes: 18, attn: 10 }),
  smallnorb_ele: Object.freeze({ classes: 9, attn: 1 }),
});

const CONFIG_DIR: Record<AdapterPlacement, string> = { attn: 'repattn', block: 'repblock' };

/**
 * The official scale `s` for a VTAB-1k task and adapter placement.
 *
 * Throws ConfigError when the task is not one of the 19 official names, or when the official
 * repository has no configs/<repattn|repblock>/<task>.yaml for that placement (the official code
 * fails there rather than using a default); pass an explicit scale in that case.
 */
export function officialScale(task: string, placement: AdapterPlacement): number {
  if (placement !== 'attn' && placement !== 'block') {
    throw new ArgumentError(expected("'attn' or 'block'", 'placement', placement));
  }
  const known = Object.keys(VTAB_TASK_SCALES);
  const entry = Object.prototype.hasOwnProperty.call(VTAB_TASK_SCALES, task) ? VTAB_TASK_SCALES[task] : undefined;
  if (entry === undefined) {
    throw new ConfigError(
      `no official RepAdapter scale for task ${JSON.stringify(task)} (placement '${placement}'): ` +
        `not a VTAB-1k task name of luogen1996/RepAdapter; known tasks: ${known.join(', ')}. ` +
        'Pass an explicit scale.',
    );
  }
  const scale = entry[placement];
  if (scale === undefined) {
    const dir = CONFIG_DIR[placement];
    const withIt = known.filter((t) => VTAB_TASK_SCALES[t][placement] !== undefined);
    throw new ConfigError(
      `no official RepAdapter scale for task ${JSON.stringify(task)} with placement '${placement}': ` +
        `luogen1996/RepAdapter has no configs/${dir}/${task}.yaml, and its train.py does not fall back ` +
        `to a default or a search there; it fails with FileNotFoundError (even when --scale is given). ` +
        `Pass an explicit scale (the official search, scripts/search_${dir}.sh, tries 0.1, 0.5, 1, 5, 10). ` +
        `Tasks with an official '${placement}' scale: ${withIt.join(', ')}; known tasks: ${known.join(', ')}.`,
    );
  }
  return scale;
}
