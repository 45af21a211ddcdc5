// Virtual devices: one stable `struct sv_device` per real device name, alive for the whole process.
// The application's device pointers stay valid across rescans and moves; `real` follows the device
// currently carrying that name (NULL while it is absent).

import CVerbs
import Glibc
import StableVerbsABI

final class DeviceRecord {
    let ptr: UnsafeMutablePointer<sv_device>
    let name: String
    /// GUID and index the application saw first (virtual = real at first sight).
    let guid: UInt64
    let index: Int32

    init(ptr: UnsafeMutablePointer<sv_device>, name: String, guid: UInt64, index: Int32) {
        self.ptr = ptr
        self.name = name
        self.guid = guid
        self.index = index
    }

    var publicDevice: UnsafeMutablePointer<ibv_device> {
        UnsafeMutableRawPointer(ptr).assumingMemoryBound(to: ibv_device.self)
    }
    var real: UnsafeMutablePointer<ibv_device>? { ptr.pointee.real }
}

struct DeviceTable {
    var byName: [String: DeviceRecord] = [:]
    var byPointer: [UInt: DeviceRecord] = [:]
    /// The last real list fetched from the lower interface, kept so its device pointers stay valid.
    var heldRealList: UnsafeMutablePointer<UnsafeMutablePointer<ibv_device>?>?
    /// Lists handed to the application (ours to free).
    var handedOut: Set<UInt> = []

    func record(_ device: UnsafeMutablePointer<ibv_device>?) -> DeviceRecord? {
        guard let device else { return nil }
        return byPointer[UInt(bitPattern: device)]
    }
}

extension Runtime {
    /// Rescans the lower interface and returns a fresh, NULL-terminated list of virtual devices.
    func deviceList(_ count: UnsafeMutablePointer<Int32>?) -> UnsafeMutablePointer<UnsafeMutablePointer<ibv_device>?>? {
        guard let getList = ops.get_device_list else {
            setErrno(ENOSYS)
            return nil
        }
        var n: Int32 = 0
        guard let realList = getList(&n) else {
            count?.pointee = n
            return nil
        }
        refreshDevices(realList, Int(n))
        guard let list = calloc(Int(n) + 1, MemoryLayout<UnsafeMutablePointer<ibv_device>?>.stride)?
            .bindMemory(to: UnsafeMutablePointer<ibv_device>?.self, capacity: Int(n) + 1)
        else {
            setErrno(ENOMEM)
            return nil
        }
        var filled = 0
        for i in 0..<Int(n) {
            guard let real = realList[i], let rec = devices.byName[deviceName(real)] else { continue }
            list[filled] = rec.publicDevice
            filled += 1
        }
        list[filled] = nil
        devices.handedOut.insert(UInt(bitPattern: list))
        count?.pointee = Int32(filled)
        return list
    }

    func freeDeviceList(_ list: UnsafeMutablePointer<UnsafeMutablePointer<ibv_device>?>) {
        if devices.handedOut.remove(UInt(bitPattern: list)) != nil {
            free(list)
        } else {
            ops.free_device_list?(list) // a real list (pass-through objects)
        }
    }

    func deviceName(_ real: UnsafeMutablePointer<ibv_device>) -> String {
        if let f = ops.get_device_name, let n = f(real) { return String(cString: n) }
        return cString(&real.pointee.name)
    }

    /// Points every virtual device at the real device now carrying its name (NULL when gone),
    /// creating virtual devices for names seen for the first time. Takes ownership of `realList`.
    func refreshDevices(_ realList: UnsafeMutablePointer<UnsafeMutablePointer<ibv_device>?>, _ n: Int) {
        var seen = Set<String>()
        for i in 0..<n {
            guard let real = realList[i] else { continue }
            let name = deviceName(real)
            seen.insert(name)
            if let rec = devices.byName[name] {
                rec.ptr.pointee.real = real
                continue
            }
            guard let p = allocateZeroed(sv_device.self) else { continue }
            p.pointee.dev = real.pointee
            p.pointee.dev._ops = _ibv_device_ops()
            p.pointee.magic = SV_MAGIC_DEVICE
            p.pointee.real = real
            let guid = ops.get_device_guid?(real) ?? 0
            let index = ops.get_device_index?(real) ?? -1
            let rec = DeviceRecord(ptr: p, name: name, guid: guid, index: index)
            p.pointee.core = opaque(rec)
            devices.byName[name] = rec
            devices.byPointer[UInt(bitPattern: rec.publicDevice)] = rec
            Log.debug("device \(name): guid \(String(guid.bigEndian, radix: 16)) index \(index)")
        }
        for (name, rec) in devices.byName where !seen.contains(name) {
            rec.ptr.pointee.real = nil
        }
        if let old = devices.heldRealList, old != realList { ops.free_device_list?(old) }
        devices.heldRealList = realList
    }

    /// Rescans and returns the real device now carrying `device`'s name.
    func currentRealDevice(_ device: DeviceRecord) -> UnsafeMutablePointer<ibv_device>? {
        if let getList = ops.get_device_list {
            var n: Int32 = 0
            if let list = getList(&n) { refreshDevices(list, Int(n)) }
        }
        return device.real
    }
}
