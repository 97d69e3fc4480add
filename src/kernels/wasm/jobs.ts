/**
 * The job protocol between the calling thread and helper threads, over a small shared control block.
 * Platform-free (no Node APIs): the Node side only spawns the helpers (node.ts, worker.ts).
 *
 * A job is an op, integer arguments and a count of items. The caller publishes it by bumping EPOCH;
 * every thread, the caller included, claims items one at a time with a compare-and-swap on one 64-bit
 * word holding (epoch, item count, next item). Epoch and count come from that same word, so a helper
 * that wakes late can never take an item of a newer job, nor count one against it; the op and arguments
 * are read only after a successful claim (the caller cannot move on while a claimed item runs). The
 * caller returns once FINISHED reaches the count. Results do not depend on which thread ran which item.
 */
import type { KernelExports } from './exports.js';

export const OP_STOP = 0;
export const OP_MATMUL = 1;
export const OP_ATTEND = 2;
/** Items of a prefill attend (assembly/prefill.ts): single tasks and blocks of a chunk's query rows. */
export const OP_PREFILL = 3;
/** Light per-row ops split over row ranges (assembly/rows.ts, swiglu): the sub-op is the first argument. */
export const OP_ROWS = 4;
export const ROWS_RMSNORM = 0;
export const ROWS_ROPE = 1;
export const ROWS_ADD = 2;
export const ROWS_SWIGLU = 3;
/** OP_MATMUL's weight kinds (its 9th argument; 16-bit kinds take panel scratch, its per-thread stride and the tiled rows next). */
export const W_F32 = 0;
export const W_BF16 = 1;
export const W_F16 = 2;

// Control block (Int32Array indices).
const EPOCH = 0,
  FINISHED = 1,
  OP = 2,
  COUNT = 3,
  ERROR = 4,
  SLEEPERS = 5,
  ARGS = 8;
export const CTRL_INTS = 24;

// The claim word: epoch (24 bits) | item count (20 bits) | next item (20 bits).
const EPOCH_SHIFT = 40n;
const COUNT_SHIFT = 20n;
const FIELD = 0xfffffn;
/** Most items one job can have. */
export const MAX_ITEMS = 0xfffff;

/**
 * How long an idle helper polls for the next job before it sleeps. Polling saves the wake-up (tens of
 * µs) between back-to-back jobs but burns a core. A decode step is ~40 jobs a few tens of µs apart:
 * sleeping at once, the caller ran 60–64% of the items itself (the helper still waking up), and 2-thread
 * decode of the bundled model (kivi2) was slower than with 100 µs of polling in 8 of 8 paired runs at a
 * 1900-token prompt (medians 165 vs 195 tokens/s) and 5 of 6 at 1024 on an otherwise idle 2-core VM
 * (2026-12-02). On the same VM under load, in the first round, sleeping at once measured best; a helper
 * descheduled mid-job is caught by STALLS_TO_SOLO.
 */
const SPIN_MS = 0.1;
/** A job that makes no progress for this long means a helper died. */
const STALL_MS = 60_000;
/**
 * On an oversubscribed machine a helper can be descheduled holding an item, and the caller then waits
 * for it: threads make things slower. After a few such stalls in a row the caller runs jobs alone for a
 * while (results are the same either way).
 */
const STALLS_TO_SOLO = 3;
const SOLO_MS = 50;

export interface JobContext {
  ctrl: Int32Array;
  next: BigUint64Array;
  k: KernelExports;
  /** 0 for the calling thread, 1.. for helpers: selects a scratch slice. */
  tid: number;
}

export function newControl(): { ctrl: SharedArrayBuffer; next: SharedArrayBuffer } {
  return { ctrl: new SharedArrayBuffer(CTRL_INTS * 4), next: new SharedArrayBuffer(8) };
}

// A float64 argument travels as two int32 words.
const f64Arg = new Float64Array(1);
const f64Words = new Int32Array(f64Arg.buffer);
/** The two int32 words of a float64 job argument. */
export function f64ToWords(v: number): [number, number] {
  f64Arg[0] = v;
  return [f64Words[0]!, f64Words[1]!];
}

/** Item i of an OP_ROWS job: rows (elements for ROWS_ADD) [i·chunk, (i + 1)·chunk) of the op. */
function runRows(c: JobContext, i: number): void {
  const a = c.ctrl;
  const k = c.k;
  switch (a[ARGS]!) {
    case ROWS_RMSNORM: {
      const rows = a[ARGS + 5]!,
        chunk = a[ARGS + 7]!;
      f64Words[0] = a[ARGS + 8]!;
      f64Words[1] = a[ARGS + 9]!;
      k.rmsnorm_rows(a[ARGS + 1]!, a[ARGS + 2]!, a[ARGS + 3]!, a[ARGS + 4]!, i * chunk, Math.min(rows, (i + 1) * chunk), a[ARGS + 6]!, f64Arg[0]!);
      break;
    }
    case ROWS_ROPE: {
      const rows = a[ARGS + 2]!,
        chunk = a[ARGS + 9]!;
      k.rope_rows(a[ARGS + 1]!, i * chunk, Math.min(rows, (i + 1) * chunk), a[ARGS + 3]!, a[ARGS + 4]!, a[ARGS + 5]!, a[ARGS + 6]!, a[ARGS + 7]!, a[ARGS + 8]!);
      break;
    }
    case ROWS_ADD: {
      const n = a[ARGS + 3]!,
        chunk = a[ARGS + 4]!;
      k.add_range(a[ARGS + 1]!, a[ARGS + 2]!, i * chunk, Math.min(n, (i + 1) * chunk));
      break;
    }
    case ROWS_SWIGLU: {
      const rows = a[ARGS + 3]!,
        I = a[ARGS + 4]!,
        chunk = a[ARGS + 5]!;
      const r0 = i * chunk;
      k.swiglu(a[ARGS + 1]! + r0 * I * 4, a[ARGS + 2]! + r0 * 2 * I * 4, Math.min(rows, r0 + chunk) - r0, I);
      break;
    }
  }
}

function runItem(c: JobContext, i: number): void {
  const a = c.ctrl;
  const op = a[OP]!;
  if (op === OP_ROWS) {
    runRows(c, i);
    return;
  }
  if (op === OP_MATMUL) {
    const outDim = a[ARGS + 5]!,
      chunk = a[ARGS + 7]!,
      kind = a[ARGS + 8]!;
    const o0 = i * chunk,
      o1 = Math.min(outDim, o0 + chunk);
    if (kind === W_F32) {
      c.k.matmul(a[ARGS]!, a[ARGS + 1]!, a[ARGS + 2]!, a[ARGS + 3]!, a[ARGS + 4]!, outDim, a[ARGS + 6]!, o0, o1);
    } else {
      // 16-bit weights: this thread's panel scratch (0: none), scratch base + tid · stride.
      const scratch = a[ARGS + 9]! === 0 ? 0 : a[ARGS + 9]! + c.tid * a[ARGS + 10]!;
      const mm = kind === W_BF16 ? c.k.matmul_bf16 : c.k.matmul_f16;
      mm(a[ARGS]!, a[ARGS + 1]!, a[ARGS + 2]!, a[ARGS + 3]!, a[ARGS + 4]!, outDim, a[ARGS + 6]!, o0, o1, scratch, a[ARGS + 11]!);
    }
  } else if (op === OP_ATTEND) {
    c.k.attend_task(
      a[ARGS]!,
      a[ARGS + 1]!,
      i,
      a[ARGS + 2]!,
      a[ARGS + 3]!,
      a[ARGS + 4]!,
      a[ARGS + 5]!,
      a[ARGS + 6]!,
      a[ARGS + 7]!,
      a[ARGS + 8]! + c.tid * a[ARGS + 9]!,
    );
  } else if (op === OP_PREFILL) {
    c.k.prefill_item(
      a[ARGS]!,
      i,
      a[ARGS + 1]!,
      a[ARGS + 2]!,
      a[ARGS + 3]!,
      a[ARGS + 4]!,
      a[ARGS + 5]!,
      a[ARGS + 6]!,
      a[ARGS + 7]!,
      a[ARGS + 8]!,
      a[ARGS + 9]!,
      a[ARGS + 10]!,
      a[ARGS + 11]!,
      a[ARGS + 12]! + c.tid * a[ARGS + 13]!,
    );
  }
}

/** Claim and run items of job `epoch` until none is left; returns the first error this thread hit and the items it ran. */
function work(c: JobContext, epoch: number): { error: unknown; ran: number } {
  const { ctrl, next } = c;
  const tag = BigInt(epoch & 0xffffff);
  let error: unknown = null;
  let ran = 0;
  for (;;) {
    const cur = Atomics.load(next, 0);
    if (cur >> EPOCH_SHIFT !== tag) return { error, ran };
    const count = Number((cur >> COUNT_SHIFT) & FIELD);
    const i = Number(cur & FIELD);
    if (i >= count) return { error, ran };
    if (Atomics.compareExchange(next, 0, cur, cur + 1n) !== cur) continue;
    ran++;
    try {
      runItem(c, i);
    } catch (e) {
      error ??= e;
      Atomics.store(ctrl, ERROR, 1);
    }
    if (Atomics.add(ctrl, FINISHED, 1) + 1 === count) Atomics.notify(ctrl, FINISHED);
  }
}

/** A helper thread's life: wait for jobs, work on them, return on OP_STOP. */
export function helperLoop(c: JobContext): void {
  const { ctrl } = c;
  let seen = Atomics.load(ctrl, EPOCH);
  for (;;) {
    let e = Atomics.load(ctrl, EPOCH);
    if (e === seen) {
      const until = performance.now() + SPIN_MS;
      let spins = 0;
      // biome-ignore lint/suspicious/noAssignInExpressions: the spin reads the epoch once per test
      while ((e = Atomics.load(ctrl, EPOCH)) === seen) {
        if ((++spins & 255) !== 0 || performance.now() < until) continue;
        Atomics.add(ctrl, SLEEPERS, 1);
        Atomics.wait(ctrl, EPOCH, seen);
        Atomics.sub(ctrl, SLEEPERS, 1);
      }
    }
    seen = e;
    if (Atomics.load(ctrl, OP) === OP_STOP) return;
    void work(c, e);
  }
}

/** The calling thread's side: publish a job, take a share of it, wait for the rest. */
export class JobRunner {
  private epoch = 0;
  private canWait = true;
  private stalls = 0;
  private soloUntil = 0;
  /** Counters: jobs run, their items, the items the calling thread ran itself, stalls. */
  readonly stats = { jobs: 0, items: 0, callerItems: 0, stalls: 0 };

  constructor(private readonly c: JobContext) {}

  /** False while helpers look descheduled: the caller should run jobs alone for now. */
  get parallel(): boolean {
    if (this.soloUntil === 0) return true;
    if (performance.now() < this.soloUntil) return false;
    this.soloUntil = 0;
    return true;
  }

  run(op: number, args: number[], count: number): void {
    if (count > MAX_ITEMS) throw new Error(`a job of ${count} items (at most ${MAX_ITEMS})`);
    const { ctrl, next } = this.c;
    for (let i = 0; i < args.length; i++) ctrl[ARGS + i] = args[i]! | 0;
    ctrl[OP] = op;
    ctrl[COUNT] = count;
    ctrl[ERROR] = 0;
    Atomics.store(ctrl, FINISHED, 0);
    this.epoch = (this.epoch + 1) >>> 0;
    const e = this.epoch;
    Atomics.store(next, 0, (BigInt(e & 0xffffff) << EPOCH_SHIFT) | (BigInt(count) << COUNT_SHIFT));
    Atomics.store(ctrl, EPOCH, e | 0);
    if (Atomics.load(ctrl, SLEEPERS) > 0) Atomics.notify(ctrl, EPOCH);
    if (op === OP_STOP) return;
    const t0 = performance.now();
    const mine = work(this.c, e);
    const t1 = performance.now();
    this.waitFinished(count);
    this.noteWait(performance.now() - t1, (t1 - t0) / Math.max(1, mine.ran));
    this.stats.jobs++;
    this.stats.items += count;
    this.stats.callerItems += mine.ran;
    if (mine.error !== null) throw mine.error;
    if (Atomics.load(ctrl, ERROR) !== 0) throw new Error('a WebAssembly kernel failed on a helper thread');
  }

  /** A wait much longer than an item takes means a helper was not running. */
  private noteWait(waitMs: number, itemMs: number): void {
    if (waitMs > 0.2 + 2 * itemMs) {
      this.stats.stalls++;
      if (++this.stalls >= STALLS_TO_SOLO) {
        this.stalls = 0;
        this.soloUntil = performance.now() + SOLO_MS;
      }
    } else if (this.stalls > 0) {
      this.stalls--;
    }
  }

  private waitFinished(count: number): void {
    const { ctrl } = this.c;
    let spins = 0;
    let last = -1;
    let since = 0;
    for (;;) {
      const f = Atomics.load(ctrl, FINISHED);
      if (f === count) return;
      if (f > count) throw new Error(`job protocol error: ${f} of ${count} items finished`);
      if (++spins < 2000) continue;
      const now = performance.now();
      if (f !== last) {
        last = f;
        since = now;
      } else if (now - since > STALL_MS) {
        throw new Error('WebAssembly helper threads stopped making progress');
      }
      if (this.canWait) {
        try {
          Atomics.wait(ctrl, FINISHED, f, 1);
        } catch {
          this.canWait = false; // a browser's main thread may not block
        }
      }
    }
  }
}
