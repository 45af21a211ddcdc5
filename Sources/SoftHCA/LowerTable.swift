import CVerbs
import Glibc
import StableVerbsABI

/// The `struct sv_lower` the double fills with its own entry points (built once, never freed).
nonisolated(unsafe) let softLowerTable: UnsafeMutablePointer<sv_lower> = {
    let t = allocateZeroed(sv_lower.self)
    t.pointee.name = UnsafePointer(strdup("softhca"))

    t.pointee.get_device_list = sh_get_device_list
    t.pointee.free_device_list = sh_free_device_list
    t.pointee.get_device_name = sh_get_device_name
    t.pointee.get_device_guid = sh_get_device_guid
    t.pointee.get_device_index = sh_get_device_index
    t.pointee.open_device = sh_open_device
    t.pointee.close_device = sh_close_device

    t.pointee.query_device = sh_query_device
    t.pointee.query_gid = sh_query_gid
    t.pointee.query_gid_ex = sh_query_gid_ex
    t.pointee.query_gid_table = sh_query_gid_table
    t.pointee.query_pkey = sh_query_pkey
    t.pointee.get_pkey_index = sh_get_pkey_index

    t.pointee.alloc_pd = sh_alloc_pd
    t.pointee.dealloc_pd = sh_dealloc_pd
    t.pointee.reg_mr = sh_reg_mr
    t.pointee.reg_mr_iova2 = sh_reg_mr_iova2
    t.pointee.dereg_mr = sh_dereg_mr

    t.pointee.create_comp_channel = sh_create_comp_channel
    t.pointee.destroy_comp_channel = sh_destroy_comp_channel
    t.pointee.create_cq = sh_create_cq
    t.pointee.resize_cq = sh_resize_cq
    t.pointee.destroy_cq = sh_destroy_cq
    t.pointee.get_cq_event = sh_get_cq_event
    t.pointee.ack_cq_events = sh_ack_cq_events
    t.pointee.get_async_event = sh_get_async_event
    t.pointee.ack_async_event = sh_ack_async_event

    t.pointee.create_qp = sh_create_qp
    t.pointee.modify_qp = sh_modify_qp
    t.pointee.query_qp = sh_query_qp
    t.pointee.destroy_qp = sh_destroy_qp
    t.pointee.qp_to_qp_ex = sh_qp_to_qp_ex
    t.pointee.query_ece = sh_query_ece
    t.pointee.set_ece = sh_set_ece
    t.pointee.create_srq = sh_create_srq
    t.pointee.modify_srq = sh_modify_srq
    t.pointee.query_srq = sh_query_srq
    t.pointee.destroy_srq = sh_destroy_srq

    t.pointee.create_ah = sh_create_ah
    t.pointee.destroy_ah = sh_destroy_ah
    t.pointee.init_ah_from_wc = sh_init_ah_from_wc
    t.pointee.attach_mcast = sh_attach_mcast
    t.pointee.detach_mcast = sh_detach_mcast

    t.pointee.fork_init = sh_fork_init
    return t
}()
