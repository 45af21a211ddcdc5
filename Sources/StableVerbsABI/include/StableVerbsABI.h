/* The C half of StableVerbs: rdma-core 44 object layouts, the lower interface, start-up. */
#ifndef STABLEVERBS_ABI_H
#define STABLEVERBS_ABI_H
#include "sv_lower.h"
#include "sv_objects.h"
#include "sv_startup.h"
#include "sv_control.h"
#endif
