"""SystemMemoryCollector on fake cgroup v2 trees and a fake /proc, as real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from piggywatch.collectors.base import CollectorError
from piggywatch.collectors.system_memory import SystemMemoryCollector
from piggywatch.store import Sample

MEMINFO = """\
MemTotal:        8000000 kB
MemFree:          500000 kB
MemAvailable:    2000000 kB
Buffers:          100000 kB
Cached:          1500000 kB
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_proc(root: Path, cgroup_line: str = "0::/\n") -> Path:
    proc = root / "proc"
    write(proc / "meminfo", MEMINFO)
    write(proc / "self" / "cgroup", cgroup_line)
    return proc


def by_name(samples: list[Sample]) -> dict[str, tuple[float, str]]:
    return {s.name: (s.value, dict(s.labels)["source"]) for s in samples}


def test_a_container_limit_gives_working_set_over_memory_max(tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    write(cgroup / "memory.current", "900000000\n")
    write(cgroup / "memory.max", "1000000000\n")
    write(cgroup / "memory.stat", "anon 700000000\nfile 200000000\ninactive_file 100000000\n")
    collector = SystemMemoryCollector(cgroup_root=cgroup, proc_root=fake_proc(tmp_path))

    assert by_name(collector.collect(1.0)) == {
        # 900 MB current minus 100 MB of reclaimable inactive page cache
        "system_memory_used_bytes": (800_000_000.0, "cgroup"),
        "system_memory_limit_bytes": (1_000_000_000.0, "cgroup"),
        "system_memory_usage_ratio": (0.8, "cgroup"),
    }


def test_a_limit_on_a_parent_cgroup_binds_the_process(tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    pod = cgroup / "kubepods.slice" / "pod1"
    write(cgroup / "kubepods.slice" / "memory.max", "max\n")
    write(pod / "memory.max", "500000000\n")
    write(pod / "app" / "memory.max", "max\n")
    write(pod / "app" / "memory.current", "450000000\n")
    proc = fake_proc(tmp_path, "0::/kubepods.slice/pod1/app\n")

    reading = SystemMemoryCollector(cgroup_root=cgroup, proc_root=proc).read()

    assert (reading.used, reading.limit, reading.source) == (450e6, 500e6, "cgroup")


def test_an_unlimited_cgroup_falls_back_to_meminfo(tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    write(cgroup / "memory.current", "900000000\n")
    write(cgroup / "memory.max", "max\n")
    collector = SystemMemoryCollector(cgroup_root=cgroup, proc_root=fake_proc(tmp_path))

    assert by_name(collector.collect(1.0)) == {
        "system_memory_used_bytes": (6_000_000 * 1024.0, "meminfo"),
        "system_memory_limit_bytes": (8_000_000 * 1024.0, "meminfo"),
        "system_memory_usage_ratio": (0.75, "meminfo"),
    }


def test_without_cgroup_v2_meminfo_is_used(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "12:memory:/docker/abc\n")   # cgroup v1 only
    reading = SystemMemoryCollector(cgroup_root=tmp_path / "absent", proc_root=proc).read()
    assert (reading.used, reading.limit, reading.source) == (6_000_000 * 1024.0,
                                                             8_000_000 * 1024.0, "meminfo")


def test_no_readable_source_is_a_setup_error(tmp_path: Path) -> None:
    collector = SystemMemoryCollector(cgroup_root=tmp_path / "a", proc_root=tmp_path / "b")
    with pytest.raises(CollectorError) as caught:
        collector.collect(1.0)
    assert caught.value.reason == "setup"
    assert "meminfo" in str(caught.value)


def test_the_real_machine_reports_a_sane_ratio() -> None:
    ratio = [s for s in SystemMemoryCollector().collect(1.0)
             if s.name == "system_memory_usage_ratio"]
    assert len(ratio) == 1 and 0.0 < ratio[0].value < 1.0
