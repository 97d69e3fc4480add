/**
 * The words of the records a step plan's storage buffer holds on the GPU (written by planbuf.ts, read by
 * the attention, merge and job kernels): one description both sides take their offsets from.
 */

import { arenaDecls } from './arenas.js';
import { CONVERT, GRID } from './wgsl.js';

/** Words per GPU segment record: kind | bits << 8 | slot << 16, n, base word (or first row), t0, cap, G, section words, start. */
export const GSEG_WORDS = 8;
/** Words per GPU task record: row, k0, kn, v0, vn, tokens, KIVI key tokens, value bits | G << 8. */
export const GTASK_WORDS = 8;
/** Words per attention work item: task, kv head, first token, end token, key segment, value segment, partial (or NONE). */
export const ITEM_WORDS = 8;
/** Words per merge item: task, kv head, first partial, partials. */
export const MERGE_WORDS = 4;
/** Words per job item: job, kv head. */
export const JOBITEM_WORDS = 2;
/** A work item that writes the output itself (no partial to merge). */
export const NO_PARTIAL = 0xffffffff;

/** GSEG_RUN (planbuf.ts) in WGSL. */
export const GSEG_RUN_HEX = '0x80000000';

/**
 * WGSL of an attention kernel's bindings (attention.ts and bulk.ts, bound alike by the back end): the
 * uniform (item list, item count, task records), the plan, the step's qkv rows, the output, the partials
 * and `na` arenas of pages; with the float conversions and the workgroup grid they use.
 */
export function attnBindings(na: number, arena = 'vec4<u32>'): string {
  return /* wgsl */ `struct P { items: u32, n: u32, tasks: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> att: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
${arenaDecls(arena, 'read', 5, na)}
${CONVERT}
${GRID}`;
}

/**
 * WGSL reading the plan buffer `plan` (a u32 storage array): a segment record's word k (sw), the task token
 * where it ends, and where its token t lives (seg_at: arena slot, first word of its page, its slot in the
 * page; a page run, pagetables.ts, looks its page up in the run's table, kept in the plan buffer).
 */
export const SEG_READERS = /* wgsl */ `
fn sw(s: u32, k: u32) -> u32 { return plan[s * ${GSEG_WORDS}u + k]; }
fn seg_end(s: u32) -> u32 { return sw(s, 7u) + sw(s, 1u); }
fn seg_at(s: u32, t: u32) -> vec3<u32> {
  let info = sw(s, 0u);
  let r = sw(s, 3u) + t - sw(s, 7u);
  if ((info & ${GSEG_RUN_HEX}u) == 0u) { return vec3<u32>(info >> 16u, sw(s, 2u), r); }
  let cap = sw(s, 4u);
  let pi = r / cap;
  let pg = plan[sw(s, 2u) + pi];
  return vec3<u32>(pg >> 27u, (pg & 0x7ffffffu) * 4u, r - pi * cap);
}
`;

/**
 * WGSL opening an attention kernel's main: the work item of this workgroup (`it` of p.n, at p.items) and
 * its words, the task's record (tk) and its query row.
 */
export const ITEM_PROLOGUE = /* wgsl */ `  let it = wg_index(wid, nw);
  if (it >= p.n) { return; }
  let ib = p.items + it * ${ITEM_WORDS}u;
  let task = plan[ib];
  let h = plan[ib + 1u];
  let ta = plan[ib + 2u];
  let tb = plan[ib + 3u];
  var kseg = plan[ib + 4u];
  var vseg = plan[ib + 5u];
  let pidx = plan[ib + 6u];
  let tk = p.tasks + task * ${GTASK_WORDS}u;
  let qrow = plan[tk];
`;
