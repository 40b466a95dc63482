// Entry point of the worker threads in test/worker.test.ts. Node 20 does not apply the parent's
// `--import=tsx` hooks to a worker's own entry module, so this plain ES module registers tsx in
// the worker and then imports the TypeScript body.
import { register } from 'tsx/esm/api';

register();
await import('./vit-worker.ts');
