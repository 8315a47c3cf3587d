/* Where the account password comes from.  Never from the command line:
 * argv is visible to every user through /proc. */
#ifndef MAILFS_SECRET_H
#define MAILFS_SECRET_H

/* How long password_cmd may take: long enough for a passphrase prompt. */
#define SECRET_PASSWORD_CMD_TIMEOUT_MS (120 * 1000)

/* Reads the password, in order of preference, from: password_file (its
 * first line), the MAILFS_PASSWORD environment variable, the first line
 * printed by password_cmd (see secret_cmd.h), or a prompt on the
 * terminal.  Returns a malloc'd string owned by the caller (wipe it with
 * secret_free), or NULL with *error_r set.  A password containing CR, LF
 * or NUL is refused. */
char *secret_read_password(const char *password_file, const char *password_cmd,
	const char **error_r);

/* Overwrites and frees a password; sets *secret to NULL. */
void secret_free(char **secret);

#endif
