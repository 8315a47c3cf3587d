#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "src/log.h"
#include "src/sd_notify.h"

/* Set once by sd_notify_init, before any thread exists; read-only after. */
static struct sockaddr_un notify_addr;
static socklen_t notify_len;   /* 0: no manager to tell */

void sd_notify_init(void)
{
	const char *name = getenv("NOTIFY_SOCKET");
	size_t len;

	notify_len = 0;
	if (!name)
		return;
	len = strlen(name);
	/* Only file system and abstract sockets; anything else (systemd's
	 * "vsock:" addresses) is not for a local daemon like this one. */
	if ((name[0] == '/' || name[0] == '@') && len >= 2 &&
	    len < sizeof(notify_addr.sun_path)) {
		memset(&notify_addr, 0, sizeof(notify_addr));
		notify_addr.sun_family = AF_UNIX;
		memcpy(notify_addr.sun_path, name, len);
		if (name[0] == '@')
			notify_addr.sun_path[0] = '\0';
		/* An abstract name is exactly len bytes, without a NUL. */
		notify_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
			len + (name[0] == '/'));
	}
	unsetenv("NOTIFY_SOCKET");
}

void sd_notify_send(const char *state)
{
	int fd;

	if (!notify_len)
		return;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL | MSG_DONTWAIT,
			(const struct sockaddr *)&notify_addr, notify_len) < 0)
		log_debug("NOTIFY_SOCKET: cannot send: %s",
			strerror(errno));
	close(fd);
}

void sd_notify_status(const char *prefix, const char *fmt, ...)
{
	char text[1024];
	int n = 0;
	va_list ap;

	if (!notify_len)
		return;
	if (prefix)
		n = snprintf(text, sizeof(text), "%s\n", prefix);
	if (n < 0 || (size_t)n >= sizeof(text) - 8)
		return;
	n += snprintf(text + n, sizeof(text) - n, "STATUS=");
	va_start(ap, fmt);
	vsnprintf(text + n, sizeof(text) - n, fmt, ap);   /* may cut: fine */
	va_end(ap);
	for (char *p = text + n; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	sd_notify_send(text);
}
