/**
 * The data side of training: datasets decoded once into a uint8 cache (VTAB-1k lists,
 * ImageFolder trees, IDX files), and a seeded, resumable loader whose batches (normalization,
 * RandomResizedCrop, flip, Mixup / CutMix) are assembled by native code.
 *
 *     import { data } from 'repadapter';
 *     const train = await data.vtab('data/vtab-1k/cifar', 'train800val200', { imageSize: 224 });
 *     for await (const batch of data.loader(train, { batchSize: 64, shuffle: true, seed: 1 })) { … }
 */
import { ImageDataset, type FromPixelsOptions } from './dataset.js';

export { ImageDataset, type SkippedItem, type FromPixelsOptions } from './dataset.js';
export { type LoadOptions, type OnError } from './decode.js';
export { vtab, parseVtabList, VTAB_SPLITS, VTAB_TASKS, type VtabOptions, type VtabSplit } from './vtab.js';
export { imageFolder, type ImageFolderOptions } from './image-folder.js';
export { idx, mnist, parseIdx, FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, type IdxOptions } from './idx.js';
export { DataLoader, loader, type LoaderOptions, type LoaderState, type Batch } from './loader.js';
export {
  IMAGENET_MEAN,
  IMAGENET_STD,
  INCEPTION_MEAN,
  INCEPTION_STD,
  type Normalize,
  type AugmentOptions,
  type MixupOptions,
  type Triple,
} from './transforms.js';

/** A dataset over pixels already in memory ([n, size, size, channels] uint8). */
export function fromPixels(pixels: Uint8Array, labels: Int32Array | readonly number[], opts: FromPixelsOptions): ImageDataset {
  return ImageDataset.fromPixels(pixels, labels, opts);
}
