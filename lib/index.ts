/** repadapter: RepAdapter for Vision Transformers on a native C++ core. */
export { ViT, type ParamInfo, type Target, type CreateOptions, type LoadResult } from './vit.js';
export { Tensor, type DType, type Device } from './tensor.js';
export { presets, resolveConfig, adapterDefaults, type ViTOptions, type AdapterOptions, type ResolvedConfig } from './config.js';
export * from './errors.js';
export {
  parseSafetensors,
  readSafetensors,
  serializeSafetensors,
  writeSafetensors,
  toFloat32,
  toIntArray,
  type TensorEntry,
  type SafetensorsContents,
} from './io/safetensors.js';
export type { TrainableSet, Placement, ComputeDType } from './native.js';
export * as optim from './optim/index.js';
export * as schedules from './optim/schedules.js';
export * as data from './data/index.js';
export {
  saveCheckpoint,
  loadCheckpoint,
  readCheckpoint,
  readCheckpointInfo,
  CheckpointKeeper,
  type CheckpointInput,
  type Checkpoint,
  type CheckpointInfo,
  type KeeperOptions,
  type TrainingPosition,
} from './train/checkpoint.js';
export { loadPretrained, readWeights, type LoadPretrainedOptions, type PretrainedReport } from './io/pretrained.js';
export { saveAdapters, loadAdapters, readAdapters, modelConfigFromAdapters, fingerprint } from './io/adapters.js';
export { readNpz } from './io/npz.js';
export { Trainer, NonFiniteLossError, type TrainerOptions, type FitOptions, type FitResult, type EvalResult, type EpochRecord } from './train/trainer.js';
export { officialScale, VTAB_TASK_SCALES } from './train/vtab-scales.js';
export { exportOnnx, toOnnx, ONNX_INPUT, ONNX_OUTPUT, type OnnxExportOptions } from './io/onnx.js';
