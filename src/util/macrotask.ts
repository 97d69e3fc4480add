/**
 * Run `fn` on the next turn of the event loop, after pending I/O and messages: setImmediate in Node;
 * a MessageChannel elsewhere (browsers and workers, where setTimeout(0) is clamped to 4 ms once
 * nested, which would cap a token loop at 250 steps/s).
 */
export const nextMacrotask: (fn: () => void) => void = (() => {
  const g = globalThis as { setImmediate?: (fn: () => void) => unknown };
  if (typeof g.setImmediate === 'function') return (fn: () => void) => void g.setImmediate!(fn);
  const queue: (() => void)[] = [];
  const channel = new MessageChannel();
  channel.port1.onmessage = () => queue.shift()?.();
  return (fn: () => void) => {
    queue.push(fn);
    channel.port2.postMessage(null);
  };
})();
