/**
 * Tensor: a handle to memory owned by the native core.
 *
 * Memory is released by `dispose()` (explicit, idempotent) or a `using` declaration; a
 * FinalizationRegistry frees what was forgotten, but only as a backstop. Data crosses the
 * boundary as copies (`Tensor.from`, `toArray`), so no JavaScript view can outlive the memory
 * behind it.
 */
import { ArgumentError, DisposedError, ShapeError, expected } from './errors.js';
import { call, native, type NativeTensorHandle } from './native.js';

/** float32 today; bf16 joins for the frozen backbone on CPUs and GPUs that have it. */
export type DType = 'float32';
export type Device = 'cpu' | 'cuda';

const backstop = new FinalizationRegistry<NativeTensorHandle>((handle) => handle.dispose());

function checkShape(shape: readonly number[], name: string): number {
  if (!Array.isArray(shape)) throw new ShapeError(expected('an array of sizes', name, shape));
  let size = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new ShapeError(expected('non-negative integer sizes', name, shape));
    size *= d;
  }
  return size;
}

export class Tensor implements Disposable {
  #handle: NativeTensorHandle | null;
  readonly shape: readonly number[];
  readonly dtype: DType = 'float32';

  private constructor(handle: NativeTensorHandle, shape: readonly number[]) {
    this.#handle = handle;
    this.shape = Object.freeze([...shape]);
    backstop.register(this, handle, this);
  }

  /** Copies `data` into a new CPU tensor of the given shape. */
  static from(data: Float32Array | ArrayLike<number>, shape: readonly number[]): Tensor {
    const size = checkShape(shape, 'shape');
    if (data === null || typeof data !== 'object' || typeof (data as ArrayLike<number>).length !== 'number')
      throw new ArgumentError(expected('a Float32Array or an array of numbers', 'data', data));
    const array = data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>);
    if (array.length !== size)
      throw new ShapeError(`expected ${size} values for a tensor of shape [${shape.join(', ')}], got ${array.length}`);
    return new Tensor(call(() => new native.NativeTensor(array, [...shape])), shape);
  }

  static zeros(shape: readonly number[]): Tensor {
    return Tensor.from(new Float32Array(checkShape(shape, 'shape')), shape);
  }

  /** @internal Wraps a handle the native layer returned. */
  static adopt(handle: NativeTensorHandle): Tensor {
    return new Tensor(handle, handle.shape());
  }

  /** Number of elements. */
  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get device(): Device {
    return this.handle().device();
  }

  get disposed(): boolean {
    return this.#handle === null;
  }

  /** A copy of the data. */
  toArray(): Float32Array {
    return call(() => this.handle().toArray());
  }

  /** @internal The native handle; throws DisposedError after dispose(). */
  handle(): NativeTensorHandle {
    if (!this.#handle) throw new DisposedError(`this Tensor [${this.shape.join(', ')}] has been disposed`);
    return this.#handle;
  }

  dispose(): void {
    if (!this.#handle) return;
    backstop.unregister(this);
    this.#handle.dispose();
    this.#handle = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}]${this.#handle ? '' : ', disposed'})`;
  }
}
