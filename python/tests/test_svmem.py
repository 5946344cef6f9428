"""The Python binding: zero-copy numpy views of managed memory, svmem's view
rules across the buffer protocol, migration, attributes, events, counters."""

import gc

import numpy as np
import pytest

import svmem

MiB = 1 << 20


@pytest.fixture
def svm():
    return svmem.Svm(device_memory=32 * MiB)


def test_asarray_is_zero_copy_over_managed_memory(svm):
    region = svm.alloc(4 * MiB)
    a = np.asarray(region)
    assert a.dtype == np.uint8 and a.size == 4 * MiB == len(region)
    assert a.ctypes.data == region.addr
    w = a.view(np.uint64)
    w[:] = np.arange(w.size, dtype=np.uint64) * 7
    del a, w
    # The device reads what numpy wrote, at the same address.
    got = svm.device_read(0, region.addr + 8 * 1000, 8)
    assert int.from_bytes(got, "little") == 7000


def test_data_survives_migration_both_ways(svm):
    region = svm.alloc(6 * MiB)
    a = np.asarray(region).view(np.float64)
    a[:] = np.linspace(0.0, 1.0, a.size)
    expected = a.copy()
    del a
    rep = region.migrate(0)
    assert rep["requested"] == rep["migrated"] == 6 * MiB // svmem.PAGE_SIZE
    assert svm.location(region.addr) == 0
    assert svm.memory_usage()["device_bytes"] == 6 * MiB
    before = svm.stats()["cpu_faults"]
    b = np.asarray(region).view(np.float64)
    np.testing.assert_array_equal(b, expected)  # pages fault back on access
    assert svm.stats()["cpu_faults"] > before
    assert svm.location(region.addr) == "system"


def test_writable_array_bars_devices_until_deleted(svm):
    region = svm.alloc(2 * MiB)
    a = np.asarray(region)
    assert region.exports == 1
    with pytest.raises(svmem.BusyError, match="CPU view"):
        svm.device_read(0, region.addr, 8)
    with pytest.raises(svmem.BusyError):
        svm.device_write(0, region.addr, b"x" * 8)
    # Migration moves bytes without changing them: allowed, and the array
    # still reads its data afterwards.
    a[:16] = 5
    region.migrate(0)
    assert a[:16].tolist() == [5] * 16
    del a
    assert region.exports == 0
    svm.device_write(0, region.addr, b"\x09" * 8)
    assert np.asarray(region)[:8].tolist() == [9] * 8


def test_read_only_export_lets_devices_read_but_not_write(svm):
    region = svm.alloc(1 * MiB)
    np.asarray(region)[:4] = [1, 2, 3, 4]
    ro = np.asarray(region.read_only())
    assert not ro.flags.writeable
    with pytest.raises(ValueError):
        ro[0] = 9
    assert svm.device_read(0, region.addr, 4) == b"\x01\x02\x03\x04"
    with pytest.raises(svmem.BusyError):
        svm.device_write(0, region.addr, b"\x00")
    del ro
    svm.device_write(0, region.addr, b"\x08")
    assert np.asarray(region)[0] == 8


def test_an_array_keeps_its_region_and_svm_alive():
    svm = svmem.Svm(device_memory=16 * MiB)
    a = np.asarray(svm.alloc(1 * MiB))  # the Region object is not kept
    del svm
    gc.collect()
    a[:] = 3
    assert int(a.sum()) == 3 * MiB


def test_free_is_refused_while_viewed_and_final_after(svm):
    region = svm.alloc(1 * MiB)
    a = np.asarray(region)
    with pytest.raises(svmem.RegionInUseError, match="delete them first"):
        region.free()
    del a
    region.free()
    assert region.freed
    assert svm.memory_usage()["managed_bytes"] == 0
    with pytest.raises(svmem.Error, match="freed"):
        region.migrate(0)
    with pytest.raises(BufferError, match="freed"):
        memoryview(region)
    with svm.alloc(1 * MiB) as r:
        assert svm.memory_usage()["managed_bytes"] == 1 * MiB
    assert r.freed and svm.memory_usage()["managed_bytes"] == 0


def test_advice_and_attributes(svm):
    region = svm.alloc(4 * MiB)
    svm.advise(region.addr, len(region), "preferred_location", 0)
    svm.advise(region.addr, len(region), "read_mostly")
    attrs = svm.attributes(region.addr, len(region))
    assert attrs["preferred_location"] == 0
    assert attrs["flags"] & svmem.FLAG_READ_MOSTLY
    svm.set_attributes(region.addr, 2 * MiB, clear_flags=svmem.FLAG_READ_MOSTLY, granularity=3)
    assert not svm.attributes(region.addr, 2 * MiB)["flags"] & svmem.FLAG_READ_MOSTLY
    assert svm.attributes(region.addr, len(region))["granularity"] == 3
    svm.set_attributes(region.addr, len(region), access={0: "access_in_place"})
    assert svm.attributes(region.addr, len(region))["access"] == ["access_in_place"]
    rep = svm.prefetch(region.addr, len(region), 0)
    assert rep["migrated"] == 4 * MiB // svmem.PAGE_SIZE
    assert svm.attributes(region.addr, len(region))["prefetch_location"] == 0


def test_bad_input_names_the_problem(svm):
    region = svm.alloc(1 * MiB)
    with pytest.raises(svmem.Error, match="aligned"):
        svm.migrate(region.addr + 1, 4096, 0)
    with pytest.raises(ValueError, match="unknown; use"):
        svm.advise(region.addr, len(region), "make_it_fast")
    with pytest.raises(ValueError, match="needs target"):
        svm.advise(region.addr, len(region), "preferred_location")
    with pytest.raises(ValueError, match='"system" or a device index'):
        region.migrate("gpu")
    with pytest.raises(svmem.Error, match="dev3"):
        region.migrate(3)
    with pytest.raises(svmem.Error):
        svm.set_attributes(region.addr, len(region), set_flags=0x80000)
    with pytest.raises(ValueError, match="1 to 8 devices"):
        svmem.Svm(devices=0)
    with pytest.raises(ValueError, match="devices=1000"):
        svmem.Svm(devices=1000)


def test_events_record_migrations(svm):
    region = svm.alloc(4 * MiB)
    with pytest.raises(svmem.Error, match="subscribe"):
        svm.events()
    svm.subscribe()
    region.migrate(0)
    region.migrate("system")
    ends = [e for e in svm.events() if e["event"] == "migrate_end"]
    pages = 4 * MiB // svmem.PAGE_SIZE
    assert sum(e["migrated"] for e in ends if (e["from"], e["to"]) == ("system", "dev0")) == pages
    assert sum(e["migrated"] for e in ends if (e["from"], e["to"]) == ("dev0", "system")) == pages
    assert all(e["start"] == hex(region.addr) for e in ends[:1])
    assert svm.events() == []


def test_stats_and_memory_usage(svm):
    region = svm.alloc(2 * MiB)
    np.asarray(region)[:] = 1
    region.migrate(0)
    stats = svm.stats()
    assert stats["to_device_pages"] == 2 * MiB // svmem.PAGE_SIZE
    assert stats["to_device_bytes"] == 2 * MiB
    usage = svm.memory_usage()
    assert usage["managed_bytes"] == 2 * MiB
    assert usage["devices"][0]["resident_bytes"] == 2 * MiB
    assert svm.devices() == [0]


def test_numpy_writes_race_migrations_without_losing_a_byte(svm):
    import threading

    region = svm.alloc(4 * MiB)
    a = np.asarray(region).view(np.uint64)
    stop = threading.Event()
    moved = []

    def migrate():
        while not stop.is_set():
            for to in (0, "system"):
                moved.append(region.migrate(to)["migrated"])

    t = threading.Thread(target=migrate)
    t.start()
    round_ = 0
    try:
        # Until the other thread has moved the region both ways twice.
        while len(moved) < 4 or round_ < 5:
            round_ += 1
            a[:] = round_  # CPU writes fault pages back mid-migration
            assert int(a.min()) == int(a.max()) == round_
    finally:
        stop.set()
        t.join()
    assert sum(moved) > 0
    del a
    b = np.asarray(region).view(np.uint64)
    assert int(b.min()) == int(b.max()) == round_
