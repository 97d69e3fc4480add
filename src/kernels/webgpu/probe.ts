/**
 * A streaming-read probe of the GPU (like ../shared/docs/gpu-bandwidth.mjs): one large buffer read with
 * vec4<u32> loads, grid-stride, many dispatches in one submission, wall clock around the queue's
 * completion. What "close to the bandwidth limit" means for the kernels on this GPU, measured in the
 * same run as they are.
 */

import { median } from '../../studies/numbers.js';
import type { GpuTensor, WebGpuBackend } from './backend.js';

const WG = 256;
/** Workgroups of the probe: a few waves on the largest GPUs. */
const GROUPS = 4096;

const PROBE = /* wgsl */ `
struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> o: array<u32>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let stride = nw.x * ${WG}u;
  var x = vec4<u32>(0u);
  for (var i = g.x; i < p.n; i += stride) { x = x ^ a[i]; }
  o[g.x] = x.x ^ x.y ^ x.z ^ x.w;
}`;

export interface ReadBandwidth {
  /** Bytes read per pass. */
  bytes: number;
  /** Median seconds per pass. */
  seconds: number;
  /** bytes / seconds / 1e9 */
  gbps: number;
}

/**
 * Read `bytes` (default: 1 GiB or the largest binding; 64 MiB on a software adapter) `passes` times per
 * round; the median round.
 */
export async function streamingRead(
  b: WebGpuBackend,
  bytes = Math.min(b.fallback ? 64 << 20 : 1 << 30, b.maxBinding),
  passes = 20,
  rounds = 7,
): Promise<ReadBandwidth> {
  const core = b.core;
  const n = Math.floor(bytes / 16);
  const src = b.tensor('f32', n * 4);
  const out = b.tensor('u32', GROUPS * WG);
  try {
    b.fillRandom(src, 1, 1);
    const k = core.kernel('probe', PROBE, ['read', 'rw']);
    const pass = () =>
      core.dispatch(k, [{ b: (src as GpuTensor).g }, { b: (out as GpuTensor).g }], GROUPS, (u, _f, at) => {
        u[at] = n;
      });
    pass();
    await core.sync();
    const times: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const t0 = performance.now();
      for (let i = 0; i < passes; i++) pass();
      await core.sync();
      times.push((performance.now() - t0) / 1000 / passes);
    }
    const seconds = median(times);
    return { bytes: n * 16, seconds, gbps: (n * 16) / seconds / 1e9 };
  } finally {
    b.release(src);
    b.release(out);
  }
}
