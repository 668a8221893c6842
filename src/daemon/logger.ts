/** pino, JSON lines to stderr. Logging is off the data path, so writes are synchronous: nothing is lost at exit. */
import { pino, destination, stdTimeFunctions, type Logger } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** As qsd, which prints nothing in a normal run: only warnings and errors. */
export const DEFAULT_LOG_LEVEL = 'warn';

export function createLogger(level: string = DEFAULT_LOG_LEVEL): Logger {
  return pino({ level, base: { pid: process.pid }, timestamp: stdTimeFunctions.isoTime }, destination({ fd: 2, sync: true }));
}
