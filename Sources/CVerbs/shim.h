#ifndef CVERBS_SHIM_H
#define CVERBS_SHIM_H
/* The system headers of rdma-core 44 (Debian 12: libibverbs-dev, librdmacm-dev). */
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#endif
