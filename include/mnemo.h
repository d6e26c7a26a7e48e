/*
 * mnemo.h - the public C API of libmnemo, a GPU-accelerated memory server
 * library for AI applications. Include this one header.
 */
#ifndef MNEMO_H
#define MNEMO_H

#define MNEMO_VERSION "0.1.0"

#include "mnemo/common.h"
#include "mnemo/config.h"
#include "mnemo/compute.h"
#include "mnemo/metrics.h"
#include "mnemo/store.h"
#include "mnemo/rpc.h"
#include "mnemo/server.h"

#endif /* MNEMO_H */
