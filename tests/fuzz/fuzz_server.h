/* A loopback TCP server for the protocol fuzz targets: it plays the mail
 * server by sending the fuzz input, whatever the client says.
 *
 * The client code under test connects with its own network layer
 * (proto/net_stream.c) to 127.0.0.1:fuzz_server_port().  The first
 * connection after fuzz_server_serve() receives the bytes, then the
 * server half-closes (end of file for the client) and reads whatever the
 * client sends until it closes.  Later connections in the same round get
 * end of file at once.
 *
 * FUZZ_SERVER_PAUSE in the input is not sent: the server stops there
 * until the client has had the bytes before it for a moment, so that the
 * client receives them in a read of their own (a line or a literal split
 * across reads).  Only the first FUZZ_SERVER_PAUSES markers pause; later
 * ones are dropped all the same.
 *
 * With MAILFS_FUZZ_TRACE set, fuzz_server_finish() writes what the client
 * sent to stderr (for writing seeds). */
#ifndef MAILFS_FUZZ_SERVER_H
#define MAILFS_FUZZ_SERVER_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "src/backend.h"

#define FUZZ_SERVER_PAUSE "\xff\xfe\xfd"
#define FUZZ_SERVER_PAUSES 4

/* Starts the server thread (once); exits the process on failure. */
void fuzz_server_start(void);

uint16_t fuzz_server_port(void);

/* Sets what the next connection receives (copied). */
void fuzz_server_serve(const uint8_t *data, size_t size);

/* Waits until the server has closed every connection of this round. */
void fuzz_server_finish(void);

/* The bytes the client will see: data[0..size) without pause markers, in
 * a malloc'd buffer (never NULL) of *len_r bytes. */
uint8_t *fuzz_server_stripped(const uint8_t *data, size_t size,
	size_t *len_r);

/* The backend targets' MAILFS_FUZZ_TRACE: set up by
 * fuzz_trace_init(), then fuzz_trace() says how each operation ended
 * (returning its status) when the variable is set. */
static bool fuzz_tracing;

static inline void fuzz_trace_init(void)
{
	fuzz_tracing = getenv("MAILFS_FUZZ_TRACE") != NULL;
}

static inline enum backend_status fuzz_trace(const char *what,
	enum backend_status st, const char *error)
{
	if (fuzz_tracing)
		fprintf(stderr, "%s: %s%s%s\n", what, backend_status_name(st),
			st != BACKEND_OK ? ": " : "",
			st != BACKEND_OK ? error : "");
	return st;
}

#endif
