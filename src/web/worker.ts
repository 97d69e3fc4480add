/**
 * The generation worker: loads a model from a URL and runs generations off the page's main thread,
 * streaming tokens with live cache bytes and speed. Concurrent generations share forward passes
 * (the engine batches them), so a side-by-side comparison of two caches costs one pass per step.
 */
import { KiviModel } from '../api.js';
import type { Sequence } from '../engine/batch.js';
import type { BackendChoice } from '../kernels/index.js';
import { KiviError } from '../util/errors.js';
import type { FromWorker, RunStats, ToWorker, WorkerGenerateOptions } from './protocol.js';

interface Scope {
  postMessage(m: FromWorker): void;
  addEventListener(type: 'message', fn: (e: MessageEvent<ToWorker>) => void): void;
}
const scope = globalThis as unknown as Scope;
const post = (m: FromWorker) => scope.postMessage(m);
const errorMessage = (e: unknown) => (e instanceof Error ? e.message : String(e));

let model: KiviModel | undefined;
let loading: Promise<void> | undefined;
const running = new Map<number, Sequence>();

async function load(url: string, backend: BackendChoice | undefined, threads: number | undefined): Promise<void> {
  const t0 = performance.now();
  let weightBytes = 0;
  model = await KiviModel.load(url, {
    backend,
    threads,
    onProgress: (done, total) => {
      weightBytes = total;
      post({ type: 'progress', done, total });
    },
  });
  const c = model.config;
  const name = decodeURIComponent(new URL(model.dir).pathname.replace(/\/+$/, '').split('/').pop() ?? '') || model.dir;
  post({
    type: 'loaded',
    info: {
      url: model.dir,
      name,
      numLayers: c.numLayers,
      hiddenSize: c.hiddenSize,
      numHeads: c.numHeads,
      numKvHeads: c.numKvHeads,
      headDim: c.headDim,
      vocabSize: c.vocabSize,
      maxPositions: c.maxPositions,
      backend: model.backend.name,
      device: model.backend.description,
      threads: model.backend.threads,
      weightBytes,
      loadSeconds: (performance.now() - t0) / 1000,
    },
  });
}

function generate(id: number, prompt: string | number[], o: WorkerGenerateOptions): void {
  if (!model) throw new KiviError('no model loaded');
  const ids = typeof prompt === 'string' ? model.encode(prompt) : prompt;
  const seq = model.engine.add(ids, model.newCache(o.kv ?? model.kv), {
    maxTokens: o.maxTokens,
    temperature: o.temperature,
    topK: o.topK,
    topP: o.topP,
    seed: o.seed,
    stop: o.stop,
    ignoreEos: o.ignoreEos,
  });
  running.set(id, seq);
  const t0 = performance.now();
  let tFirst = 0;
  const stats = (): RunStats => {
    const now = performance.now();
    const tokens = seq.ids.length;
    return {
      tokens,
      promptTokens: ids.length,
      cacheTokens: seq.done ? ids.length + Math.max(0, tokens - 1) : seq.cache.length,
      kvBytes: seq.done ? seq.kvBytesAtEnd : seq.kvBytes(),
      firstTokenSeconds: tFirst ? (tFirst - t0) / 1000 : (now - t0) / 1000,
      tokensPerSecond: tokens > 1 && now > tFirst ? ((tokens - 1) * 1000) / (now - tFirst) : 0,
    };
  };
  void (async () => {
    const it = seq.stream();
    try {
      for (;;) {
        const r = await it.next();
        if (r.done) {
          post({
            type: 'done',
            id,
            result: { ...stats(), text: r.value.text, ids: r.value.ids, finishReason: r.value.finishReason, seconds: (performance.now() - t0) / 1000 },
          });
          return;
        }
        if (!tFirst && r.value.token !== null) tFirst = performance.now();
        post({ type: 'token', id, token: r.value.token, text: r.value.text, stats: stats() });
      }
    } catch (e) {
      post({ type: 'error', id, message: errorMessage(e), kivi: e instanceof KiviError });
    } finally {
      running.delete(id);
    }
  })();
}

scope.addEventListener('message', (e) => {
  const m = e.data;
  try {
    switch (m.type) {
      case 'load':
        if (loading) throw new KiviError('this worker has already loaded a model');
        loading = load(m.url, m.backend, m.threads).catch((err) => post({ type: 'error', message: errorMessage(err), kivi: err instanceof KiviError }));
        break;
      case 'generate':
        generate(m.id, m.prompt, m.options);
        break;
      case 'cancel':
        running.get(m.id)?.cancel();
        break;
    }
  } catch (err) {
    post({ type: 'error', id: 'id' in m ? m.id : undefined, message: errorMessage(err), kivi: err instanceof KiviError });
  }
});
