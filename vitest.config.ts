import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    // Child processes (forks), not worker threads: the native addon and the
    // daemons the tests spawn behave as they do in production.
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: interop tests start real daemons and clients, so run two files at a time.
    maxWorkers: 2,
    minWorkers: 1,
  },
});
