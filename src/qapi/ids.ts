/** QEMU's id_wellformed() (util/id.c): user-chosen node names and ids start with a letter, then letters, digits, '-', '.', '_'. */
export const VALID_ID = /^[A-Za-z][A-Za-z0-9_.-]*$/;
