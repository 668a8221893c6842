/**
 * A setupFiles entry (vitest.config.ts): after every test file, the
 * directories its tempDir() calls made outside a test are removed. Its
 * afterAll is registered before the file's own, so it runs after them
 * (after hooks run last-registered first): the file's daemons are stopped by then.
 */
import { afterAll } from 'vitest';
import { removeFileScopedDirs } from './temp.ts';

afterAll(() => removeFileScopedDirs());
