#include "src/mail_date.h"

#include <string.h>

#include <libetpan/mailimf.h>

int64_t mail_days_from_civil(int64_t y, int m, int d)
{
	/* count from 1 March so that the leap day ends the year */
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

	return era * 146097 + doe - 719468;
}

void mail_civil_from_days(int64_t z, int *py, int *pm, int *pd)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;
	int m = (int)(mp < 10 ? mp + 3 : mp - 9);

	*py = (int)(yoe + era * 400 + (m <= 2));
	*pm = m;
	*pd = (int)(doy - (153 * mp + 2) / 5 + 1);
}

static int days_in_month(int y, int m)
{
	static const int dim[12] = {
		31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
	};

	if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return 29;
	return dim[m - 1];
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* libetpan takes any number after the time as the zone, in hhmm.  RFC 5322
 * wants four digits, but "+2" and "+02:00" turn up too and mean hours.
 * idx is where libetpan stopped, just after the zone when it found one.
 * Fixes *zone up, or returns false for a zone too odd to trust. */
static bool fix_zone(const char *v, size_t idx, int *zone)
{
	size_t b = idx;
	int sign = 1, h = 0, m = 0;

	while (b > 0 && is_digit(v[b - 1]))
		b--;
	if (b == idx || b == 0)
		return true;	/* named zone, or none */
	if (v[b - 1] == '-')
		sign = -1;
	else if (v[b - 1] != '+' && v[b - 1] != ' ' && v[b - 1] != '\t')
		return true;	/* these digits are the time: no zone */

	switch (idx - b) {
	case 4:
		return true;
	case 1:
	case 2:
		for (size_t i = b; i < idx; i++)
			h = h * 10 + (v[i] - '0');
		if (v[idx] == ':' && is_digit(v[idx + 1]) &&
		    is_digit(v[idx + 2]) && !is_digit(v[idx + 3]))
			m = (v[idx + 1] - '0') * 10 + (v[idx + 2] - '0');
		*zone = sign * (h * 100 + m);
		return true;
	default:
		return false;
	}
}

bool mail_date_parse(const char *v, int64_t *out)
{
	struct mailimf_date_time *dt = NULL;
	size_t idx = 0;
	int y, mo, d, h, mi, s, zone;

	if (mailimf_date_time_parse(v, strlen(v), &idx, &dt) !=
	    MAILIMF_NO_ERROR || !dt)
		return false;
	y = dt->dt_year;
	mo = dt->dt_month;
	d = dt->dt_day;
	h = dt->dt_hour;
	mi = dt->dt_min;
	s = dt->dt_sec;
	zone = dt->dt_zone;
	mailimf_date_time_free(dt);

	/* libetpan reports the "UT" zone as +0001 */
	if (idx >= 2 && v[idx - 2] == 'U' && v[idx - 1] == 'T')
		zone = 0;
	else if (!fix_zone(v, idx, &zone))
		return false;
	/* RFC 5322 obs-year: two digits below 50 are 20xx, others 19xx */
	if (y >= 0 && y < 50)
		y += 2000;
	else if (y >= 50 && y < 1000)
		y += 1900;

	if (y < 1900 || y > 9999 || mo < 1 || mo > 12 || d < 1 ||
	    d > days_in_month(y, mo) || h < 0 || h > 23 || mi < 0 ||
	    mi > 59 || s < 0 || s > 60)
		return false;

	int az = zone < 0 ? -zone : zone;

	if (az > 2359 || az % 100 > 59)
		return false;

	int64_t off = (int64_t)(az / 100) * 3600 + (az % 100) * 60;

	*out = mail_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s -
	       (zone < 0 ? -off : off);
	return true;
}
