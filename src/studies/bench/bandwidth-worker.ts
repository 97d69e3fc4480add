/**
 * Worker of the memory-bandwidth probe: waits for a go signal, scans its slice of a shared buffer with
 * memchr (Buffer.indexOf of a byte that is not there: libc's vectorized read loop), reports done.
 * ctrl[0] = generation (bumped to start a round), ctrl[1] = workers finished this round, ctrl[2] = quit.
 */
import { parentPort, workerData } from 'node:worker_threads';

const { sab, ctrlSab, start, end } = workerData as { sab: SharedArrayBuffer; ctrlSab: SharedArrayBuffer; start: number; end: number };
const ctrl = new Int32Array(ctrlSab);
const slice = Buffer.from(sab, start, end - start);
let gen = 0;
parentPort!.postMessage('ready');
for (;;) {
  Atomics.wait(ctrl, 0, gen);
  if (Atomics.load(ctrl, 2) !== 0) break;
  gen = Atomics.load(ctrl, 0);
  if (slice.indexOf(0xaa) !== -1) throw new Error('bandwidth buffer corrupted');
  Atomics.add(ctrl, 1, 1);
  Atomics.notify(ctrl, 1);
}
