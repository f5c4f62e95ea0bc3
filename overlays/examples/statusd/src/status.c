/* The status statusd reports, read from /proc and uname(2). */
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>

#include "status.h"

/* The value of "Key:" in /proc/meminfo, in kB; -1 if absent. */
static long meminfo_kb(const char *key)
{
	char line[128];
	long value = -1;
	size_t len = strlen(key);
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, key, len) == 0 && line[len] == ':') {
			sscanf(line + len + 1, "%ld", &value);
			break;
		}
	}
	fclose(f);
	return value;
}

/* Entries of /proc named by a number: one per process. */
static int count_processes(void)
{
	struct dirent *d;
	int count = 0;
	DIR *dir = opendir("/proc");

	if (!dir)
		return -1;
	while ((d = readdir(dir)) != NULL)
		if (isdigit((unsigned char)d->d_name[0]))
			count++;
	closedir(dir);
	return count;
}

int format_status(char *buf, size_t size)
{
	struct utsname uts;
	double uptime = 0, load[3] = { 0 };
	FILE *f;
	int n;

	if (uname(&uts) < 0)
		return -1;
	f = fopen("/proc/uptime", "r");
	if (!f || fscanf(f, "%lf", &uptime) != 1) {
		if (f)
			fclose(f);
		return -1;
	}
	fclose(f);
	f = fopen("/proc/loadavg", "r");
	if (!f || fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) {
		if (f)
			fclose(f);
		return -1;
	}
	fclose(f);
	n = snprintf(buf, size,
		     "{\"hostname\": \"%s\", \"machine\": \"%s\", \"uptime_s\": %.0f, "
		     "\"load\": [%.2f, %.2f, %.2f], \"mem_free_kb\": %ld, \"processes\": %d}\n",
		     uts.nodename, uts.machine, uptime, load[0], load[1], load[2],
		     meminfo_kb("MemAvailable"), count_processes());
	return n < 0 || (size_t)n >= size ? -1 : 0;
}
