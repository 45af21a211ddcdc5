/* The part of include/stableverbs.h that is plain data; the rest is exported by the Swift core. */
#include "stableverbs.h"

const char *stableverbs_version(void)
{
	return "0.1.0";
}
