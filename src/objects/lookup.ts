/**
 * What the block layer sees of the object registry (DriverContext.objects):
 * look an object up by id, mark it used. Narrow on purpose: a driver cannot
 * add or delete objects.
 */
export interface ObjectLookup {
  /** The bytes of secret `id`, a copy (QEMU's qcrypto_secret_lookup, with its error texts). */
  secret(id: string): Buffer;
  /**
   * The state of object `id` if it exists and is of `qomType`, else
   * undefined (the caller words the error: each QEMU user has its own text).
   */
  lookup<T>(id: string, qomType: string): T | undefined;
  /** The qom-type of object `id`, undefined if there is none. */
  type(id: string): string | undefined;
  /** Marks object `id` in use (object-del refuses it) until the returned function is called. */
  use(id: string): () => void;
}
