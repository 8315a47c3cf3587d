/* RFC 5322 dates, one reading for every part of mailfs (names, the POP3
 * view, copy-ins).
 *
 * Dates are read with libetpan's date-time parser, then corrected where
 * libetpan is too lenient: "UT" is UTC (libetpan says +0001), a zone of
 * one or two digits ("+2", "+02:00") is hours, other odd zones and
 * impossible fields (31 April, hour 24) make the date invalid, two- and
 * three-digit years are read as RFC 5322's obsolete syntax says, and
 * years outside 1900-9999 are refused.  Pure code. */
#ifndef MAILFS_MAIL_DATE_H
#define MAILFS_MAIL_DATE_H

#include <stdbool.h>
#include <stdint.h>

/* Parses an unfolded date-time value (a Date field's, or what follows the
 * ';' of a Received field) into seconds since the epoch (UTC).  Returns
 * false when it is not a date-time or holds impossible fields. */
bool mail_date_parse(const char *value, int64_t *out);

/* Days since 1970-01-01 of a proleptic Gregorian date, and back. */
int64_t mail_days_from_civil(int64_t y, int m, int d);
void mail_civil_from_days(int64_t days, int *y, int *m, int *d);

#endif
