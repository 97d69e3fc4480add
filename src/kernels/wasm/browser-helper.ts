/** A helper Web Worker: instantiate the kernels on the shared memory, then serve jobs until stopped. */
import { instantiate } from './exports.js';
import { helperLoop } from './jobs.js';
import type { HelperInit } from './kernels.js';

const scope = globalThis as unknown as { onmessage: ((e: MessageEvent) => void) | null; postMessage(m: unknown): void };
scope.onmessage = (e) => {
  scope.onmessage = null;
  const init = e.data as HelperInit & { tid: number };
  const k = instantiate(init.module, init.memory);
  scope.postMessage('ready');
  helperLoop({ ctrl: new Int32Array(init.ctrl), next: new BigUint64Array(init.next), k, tid: init.tid });
};
