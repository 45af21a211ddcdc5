/* A program that loads libibverbs and lists the devices, then exits (start-up cost). */
#include <infiniband/verbs.h>
int main(void)
{
	int n = 0;
	struct ibv_device **l = ibv_get_device_list(&n);
	if (l)
		ibv_free_device_list(l);
	return 0;
}
