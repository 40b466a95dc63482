/**
 * ImageFolder (torchvision's layout): one sub-folder per class, classes sorted by name and
 * numbered from 0, images found recursively inside each class folder by extension
 * (jpg, jpeg, png, webp, gif, tif, tiff, and bmp where sharp's build reads it; case-insensitive),
 * in sorted path order. Other files are ignored.
 */
import { readdir, realpath, stat } from 'node:fs/promises';
import path from 'node:path';

import { ArgumentError, FormatError, expected } from '../errors.js';
import { ImageDataset, type SkippedItem } from './dataset.js';
import { decodeImages, imageExtensions, resolveLoadOptions, type DecodeItem, type LoadOptions } from './decode.js';

export interface ImageFolderOptions extends LoadOptions {
  /**
   * The class folders, in label order. Default: every sub-folder, sorted. Pass a training set's
   * `classes` to load its test set with the same labels.
   */
  classes?: readonly string[];
}

const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

async function kind(p: string): Promise<'dir' | 'file' | null> {
  try {
    const s = await stat(p); // follows symlinks, as torchvision's os.walk(followlinks=True)
    return s.isDirectory() ? 'dir' : s.isFile() ? 'file' : null;
  } catch {
    return null;
  }
}

/** Image files under `dir`, recursively, sorted by path. */
async function listImages(dir: string, exts: Set<string>, seen = new Set<string>()): Promise<string[]> {
  const real = await realpath(dir);
  if (seen.has(real)) return []; // a symlink cycle
  seen.add(real);
  const names = (await readdir(dir)).sort(byName);
  const out: string[] = [];
  for (const name of names) {
    const p = path.join(dir, name);
    const k = await kind(p);
    if (k === 'dir') out.push(...(await listImages(p, exts, seen)));
    else if (k === 'file' && exts.has(path.extname(name).toLowerCase())) out.push(p);
  }
  return out;
}

/** Loads an ImageFolder tree, decoding and resizing every image once. */
export async function imageFolder(dir: string, opts?: ImageFolderOptions): Promise<ImageDataset> {
  if (typeof dir !== 'string' || dir === '') throw new ArgumentError(expected('a folder path', 'dir', dir));
  const o = resolveLoadOptions(opts, 'imageFolder');
  const root = path.resolve(dir);
  if ((await kind(root)) !== 'dir') throw new ArgumentError(expected('an existing folder', 'dir', root));

  let classes: string[];
  if (opts?.classes !== undefined) {
    if (!Array.isArray(opts.classes) || !opts.classes.every((c) => typeof c === 'string' && c !== '' && !c.includes('/')))
      throw new ArgumentError(expected('an array of class folder names', 'classes', opts.classes));
    classes = [...opts.classes];
  } else {
    classes = [];
    for (const name of (await readdir(root)).sort(byName)) if ((await kind(path.join(root, name))) === 'dir') classes.push(name);
  }
  if (classes.length === 0) throw new FormatError(`${root}: no class folders (expected one sub-folder per class)`, { file: root });
  if (o.numClasses !== undefined && o.numClasses < classes.length)
    throw new ArgumentError(expected(`at least ${classes.length} (the number of class folders)`, 'numClasses', o.numClasses));

  const exts = imageExtensions();
  const skipped: SkippedItem[] = [];
  const items: DecodeItem[] = [];
  for (let label = 0; label < classes.length; label++) {
    const classDir = path.join(root, classes[label]);
    const files = (await kind(classDir)) === 'dir' ? await listImages(classDir, exts) : null;
    if (!files || files.length === 0) {
      const reason = files
        ? `class '${classes[label]}' has no images (${[...exts].join(', ')})`
        : `class folder '${classes[label]}' does not exist`;
      if (o.onError === 'skip') skipped.push({ file: classDir, reason });
      else throw new FormatError(`${classDir}: ${reason}`, { file: classDir });
      continue;
    }
    for (const f of files) items.push({ path: f, label, file: f });
  }
  if (items.length === 0) throw new FormatError(`${root}: no images in any class folder`, { file: root });
  const decoded = await decodeImages(items.length > o.limit ? items.slice(0, o.limit) : items, o, root);
  skipped.push(...decoded.skipped);
  if (decoded.labels.length === 0)
    throw new FormatError(`${root}: no image could be decoded (${skipped.length} skipped); first: ${skipped[0]?.file}: ${skipped[0]?.reason}`, {
      file: root,
    });
  return new ImageDataset({
    name: path.basename(root),
    pixels: decoded.pixels,
    cacheSize: o.cacheSize,
    channels: 3,
    imageSize: o.imageSize,
    labels: decoded.labels,
    numClasses: o.numClasses ?? classes.length,
    classes,
    sources: decoded.sources,
    skipped,
  });
}
