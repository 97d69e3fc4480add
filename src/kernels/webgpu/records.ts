/**
 * The words of the records a step plan's storage buffer holds on the GPU (written by planbuf.ts, read by
 * the attention, merge and job kernels): one description both sides take their offsets from.
 */

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
