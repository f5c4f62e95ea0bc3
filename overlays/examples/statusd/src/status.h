/* status.c: the device's status as a JSON object. */
#ifndef STATUSD_STATUS_H
#define STATUSD_STATUS_H

#include <stddef.h>

/* Write {"hostname": ..., "uptime_s": ..., ...} into buf; -1 when /proc cannot be read. */
int format_status(char *buf, size_t size);

#endif
