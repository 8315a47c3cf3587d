#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "src/errfmt.h"
#include "src/secret.h"
#include "src/secret_cmd.h"

/* Reads the first line of f (without its line end). */
static char *read_first_line(FILE *f)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n = getline(&line, &cap, f);

	if (n < 0) {
		free(line);
		return NULL;
	}
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	if (strlen(line) != (size_t)n) {   /* embedded NUL */
		explicit_bzero(line, cap);
		free(line);
		return NULL;
	}
	return line;
}

static char *prompt_terminal(void)
{
	struct termios old, quiet;
	FILE *tty = fopen("/dev/tty", "r+");
	char *pw;

	if (!tty)
		return NULL;
	fputs("Password: ", tty);
	fflush(tty);
	if (tcgetattr(fileno(tty), &old) == 0) {
		quiet = old;
		quiet.c_lflag &= ~ECHO;
		tcsetattr(fileno(tty), TCSAFLUSH, &quiet);
	}
	pw = read_first_line(tty);
	tcsetattr(fileno(tty), TCSAFLUSH, &old);
	fputs("\n", tty);
	fclose(tty);
	return pw;
}

char *secret_read_password(const char *password_file, const char *password_cmd,
	const char **error_r)
{
	const char *env = getenv("MAILFS_PASSWORD");
	char *pw = NULL;

	if (password_file) {
		FILE *f = fopen(password_file, "r");

		if (!f) {
			*error_r = errfmt("cannot read password_file %s: %s",
				password_file, strerror(errno));
			return NULL;
		}
		pw = read_first_line(f);
		fclose(f);
		if (!pw) {
			*error_r = errfmt("password_file %s is empty or "
				"unreadable", password_file);
			return NULL;
		}
	} else if (env) {
		pw = strdup(env);
	} else if (password_cmd) {
		pw = secret_cmd_run(password_cmd, "password_cmd",
			SECRET_PASSWORD_CMD_TIMEOUT_MS, error_r);
		if (!pw)
			return NULL;
	} else if (isatty(STDIN_FILENO)) {
		pw = prompt_terminal();
	}
	if (!pw) {
		*error_r = "no password: use -o password_file=PATH, "
			"MAILFS_PASSWORD or -o password_cmd=CMD";
		return NULL;
	}
	if (strpbrk(pw, "\r\n")) {
		secret_free(&pw);
		*error_r = "the password contains a line break";
		return NULL;
	}
	return pw;
}

void secret_free(char **secret)
{
	if (!*secret)
		return;
	explicit_bzero(*secret, strlen(*secret));
	free(*secret);
	*secret = NULL;
}
