/* Logging: stderr while in the foreground, syslog once daemonized.
 * Never pass a password to any of these. */
#ifndef MAILFS_LOG_H
#define MAILFS_LOG_H

#include <stdbool.h>

void log_init(bool debug, bool use_syslog);
bool log_debug_enabled(void);

void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
