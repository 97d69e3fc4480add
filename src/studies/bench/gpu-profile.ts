/**
 * `bench generate --gpu-profile B,…`: where a decode step's GPU time goes, kernel by kernel, for each
 * cache spec at each batch size B (B sequences of the same prompt decoding together). Timestamp queries
 * around every dispatch (kernels/webgpu/profile.ts), summed over the profiled steps and divided by them.
 * The profiled steps run after the timed rounds and are not part of their speeds.
 */
import type { KiviModel } from '../../api.js';
import type { KvCache } from '../../cache/types.js';
import type { WebGpuBackend } from '../../kernels/webgpu/backend.js';
import type { KernelTime } from '../../kernels/webgpu/profile.js';
import { KiviError } from '../../util/errors.js';
import { filledCache, fillRows } from './generate.js';
import { markdownTable } from './markdown.js';
import { now } from './measure.js';

export interface GpuProfileResult {
  kv: string;
  batch: number;
  /** Profiled decode steps (each decodes one token of every sequence). */
  steps: number;
  /** Host wall time per profiled step (ms): a pass per dispatch makes it longer than an unprofiled step's. */
  wall_ms_per_step: number;
  /** GPU time per step from the first dispatch's start to the last one's end (µs). */
  span_us_per_step: number;
  /** Summed kernel time per step (µs): the GPU is idle for the rest of the span. */
  busy_us_per_step: number;
  /** Per kernel: dispatches and GPU µs per step. */
  kernels: { kernel: string; dispatches_per_step: number; us_per_step: number }[];
}

/** The model's WebGPU back end, or a one-line error (checked before a bench's timed rounds, too). */
export function profiledBackend(model: KiviModel): WebGpuBackend {
  if (model.backend.name !== 'webgpu') throw new KiviError('--gpu-profile times kernels on the GPU: it needs --backend webgpu');
  return model.backend as WebGpuBackend;
}

/**
 * Decode `steps` tokens of `batch` sequences of `prompt` per spec (or, with `fill`, of caches filled with
 * that many tokens of synthetic keys and values: generate.ts filledCache), timing every dispatch on the GPU.
 */
export async function runGpuProfile(
  model: KiviModel,
  o: { prompt: number[]; fill?: number; steps: number; specs: string[]; batches: number[] },
): Promise<GpuProfileResult[]> {
  const core = profiledBackend(model).core;
  const src = o.fill === undefined ? undefined : fillRows(model);
  const out: GpuProfileResult[] = [];
  for (const kv of o.specs) {
    for (const batch of o.batches) {
      const caches: KvCache[] = [];
      try {
        for (let s = 0; s < batch; s++) caches.push(o.fill === undefined ? await model.prefill(o.prompt, { kv }) : await filledCache(model, kv, o.fill, src));
        let ids = caches.map(() => 3);
        const step = async () => {
          const r = await model.forward(caches.map((cache, s) => ({ tokens: [ids[s]!], cache, logits: 'argmax' as const, mode: 'decode' as const })));
          ids = r.map((x) => x as number);
        };
        await step(); // untimed: kernels for this batch compiled, scratch sized
        core.startProfile();
        const t0 = now();
        let prof: Awaited<ReturnType<typeof core.stopProfile>>;
        try {
          for (let g = 0; g < o.steps; g++) await step();
        } finally {
          prof = await core.stopProfile();
        }
        const wall = now() - t0;
        const per = (x: number) => x / o.steps;
        out.push({
          kv,
          batch,
          steps: o.steps,
          wall_ms_per_step: per(wall) * 1e3,
          span_us_per_step: per(prof.spanNs) / 1e3,
          busy_us_per_step: per(prof.kernels.reduce((a, k) => a + k.ns, 0)) / 1e3,
          kernels: prof.kernels.map((k: KernelTime) => ({ kernel: k.kernel, dispatches_per_step: per(k.dispatches), us_per_step: per(k.ns) / 1e3 })),
        });
      } finally {
        for (const c of caches) c.free();
      }
    }
  }
  return out;
}

/** A line per (spec, batch) and a table of the kernels that take most of its GPU time. */
export function gpuProfileMarkdown(results: readonly GpuProfileResult[], device: string): string {
  let md = `GPU time per decode step by kernel (timestamp queries, one pass per dispatch; ${device}):\n`;
  for (const r of results) {
    md +=
      `\n**${r.kv}, ${r.batch} sequence${r.batch === 1 ? '' : 's'}** (${r.steps} steps): ${r.busy_us_per_step.toFixed(0)} µs of kernels in a GPU span of ` +
      `${r.span_us_per_step.toFixed(0)} µs per step; host wall ${r.wall_ms_per_step.toFixed(2)} ms per step (profiled)\n\n`;
    md += markdownTable(
      ['kernel', 'dispatches / step', 'µs / step', 'µs / dispatch', 'share of kernel time'],
      r.kernels.map((k) => [
        k.kernel,
        k.dispatches_per_step.toFixed(k.dispatches_per_step % 1 === 0 ? 0 : 2),
        k.us_per_step.toFixed(1),
        (k.us_per_step / k.dispatches_per_step).toFixed(1),
        `${((100 * k.us_per_step) / r.busy_us_per_step).toFixed(1)}%`,
      ]),
    );
  }
  return md;
}
