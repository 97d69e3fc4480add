/** A helper thread: instantiate the kernels on the shared memory, then serve jobs until told to stop. */
import { parentPort, workerData } from 'node:worker_threads';
import { instantiate } from './exports.js';
import { helperLoop } from './jobs.js';
import type { HelperInit } from './kernels.js';

const init = workerData as HelperInit & { tid: number };
const k = instantiate(init.module, init.memory);
parentPort!.postMessage('ready');
helperLoop({ ctrl: new Int32Array(init.ctrl), next: new BigUint64Array(init.next), k, tid: init.tid });
