// An iothread's worker thread: registers tsx (workers do not inherit the
// launcher's registration) so the TypeScript sources run as they are, then
// starts the iothread's runtime.
const { register } = await import('tsx/esm/api');
register();
await import('./runtime.ts');
