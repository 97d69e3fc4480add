/**
 * A user-facing error: bad input, a bad flag, a model we cannot load. The CLI prints its message on
 * one line and exits 1; the server maps it to a 4xx. Anything else is a bug and keeps its stack.
 */
export class KiviError extends Error {
  constructor(
    message: string,
    readonly status = 400,
  ) {
    super(message);
    this.name = 'KiviError';
  }
}
