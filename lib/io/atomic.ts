/**
 * Atomic file writes: every file this package writes (weights, adapters, checkpoints, ONNX)
 * either appears whole or not at all, and never replaces a good file with a broken one.
 * The bytes go to a uniquely named temporary file in the same directory, which is fsynced and
 * renamed over the target; then the directory is fsynced. On any error the temporary file is
 * removed and an existing target is untouched. (The new file gets default permissions; a
 * symlink at the target is replaced, not followed.)
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';

import { RepAdapterError } from '../errors.js';

const WRITE_CHUNK = 1 << 24;
/** Chunks smaller than this are gathered into one write (many small protobuf messages). */
const COALESCE = 1 << 16;
const DIR_FSYNC_UNSUPPORTED = new Set(['EISDIR', 'EINVAL', 'EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EBADF', 'EACCES']);

async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, off, Math.min(bytes.length - off, WRITE_CHUNK));
    if (bytesWritten <= 0) throw new RepAdapterError('write made no progress');
    off += bytesWritten;
  }
}

async function fsyncDirectory(dir: string): Promise<void> {
  let dh: FileHandle | undefined;
  try {
    dh = await open(dir, 'r');
    await dh.sync();
  } catch (e) {
    // Some platforms (Windows) and file systems cannot open or fsync a directory.
    const code = (e as NodeJS.ErrnoException).code;
    if (!code || !DIR_FSYNC_UNSUPPORTED.has(code)) throw e;
  } finally {
    await dh?.close().catch(() => undefined);
  }
}

/** Writes the chunks, in order, as the whole content of `path`, atomically. */
export async function writeFileAtomic(path: string, chunks: Iterable<Uint8Array>): Promise<void> {
  const target = resolve(path);
  const dir = dirname(target);
  const tmp = join(dir, `.${basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let fh: FileHandle | undefined = await open(tmp, 'wx', 0o666);
  try {
    const buffer = new Uint8Array(COALESCE);
    let used = 0;
    for (const c of chunks) {
      if (used + c.length > COALESCE && used) {
        await writeAll(fh, buffer.subarray(0, used));
        used = 0;
      }
      if (c.length >= COALESCE) await writeAll(fh, c);
      else {
        buffer.set(c, used);
        used += c.length;
      }
    }
    if (used) await writeAll(fh, buffer.subarray(0, used));
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, target);
  } catch (e) {
    if (fh) await fh.close().catch(() => undefined);
    await rm(tmp, { force: true }).catch(() => undefined);
    throw e;
  }
  await fsyncDirectory(dir);
}
