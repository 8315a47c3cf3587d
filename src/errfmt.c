#include <stdarg.h>
#include <stdio.h>

#include "src/errfmt.h"

#define ERRFMT_SLOTS 8
#define ERRFMT_LEN 512

const char *errfmt(const char *fmt, ...)
{
	static __thread char ring[ERRFMT_SLOTS][ERRFMT_LEN];
	static __thread unsigned next;
	char *buf = ring[next++ % ERRFMT_SLOTS];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, ERRFMT_LEN, fmt, ap);
	va_end(ap);
	return buf;
}
