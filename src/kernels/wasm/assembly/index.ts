/** The kernel module's exports. Pointers are byte offsets into the (shared) imported memory. */
export { matmul, tile_peak } from './matmul';
export { matmul_bf16, matmul_f16, matmul16_scratch_bytes } from './matmul16';
export { scores_f32, scores_f16, accum_f32, accum_f16 } from './dense';
export { scores_kivi, accum_kivi, accum_kivi_list, kivi_work_bytes } from './kivi';
export { softmax, swiglu } from './softmax';
export { attend_task, task_scratch_bytes } from './task';
export { pack_rows, prefill_item, prefill_scratch_bytes } from './prefill';
export { fwht_rows } from './hadamard';
export { cache_job, cache_job_scratch_bytes } from './jobs';
export { rmsnorm_rows, rope_rows, add_range } from './rows';
