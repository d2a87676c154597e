"""The loader on real files: include (globs, prefix, nesting, blocks), its errors, dump()."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jwtgate.conf.loader import MAX_CONFIG_SIZE, MAX_INCLUDE_DEPTH, dump, load
from jwtgate.conf.tree import Directive
from jwtgate.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def flat(directives: tuple[Directive, ...], depth: int = 0) -> list[tuple[int, str, tuple[str, ...], str, int]]:
    """(depth, name, args, file name, line) in document order."""
    out: list[tuple[int, str, tuple[str, ...], str, int]] = []
    for d in directives:
        out.append((depth, d.name, d.args, os.path.basename(d.file), d.line))
        if d.block is not None:
            out.extend(flat(d.block, depth + 1))
    return out


def load_error(path: Path | str) -> tuple[str, str | None, int | None]:
    with pytest.raises(ConfigError) as info:
        load(str(path))
    return info.value.message, info.value.file, info.value.line


def test_no_include(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "a 1;\nb { c; }\n")
    tree = load(str(main))
    assert flat(tree) == [(0, "a", ("1",), "nginx.conf", 1), (0, "b", (), "nginx.conf", 2), (1, "c", (), "nginx.conf", 2)]
    assert tree[0].file == str(main)


def test_include_in_place_with_files_and_lines(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "first;\ninclude extra.conf;\nlast;\n")
    write(tmp_path / "extra.conf", "\n\nx 1;\ny 2;\n")
    tree = load(str(main))
    assert flat(tree) == [
        (0, "first", (), "nginx.conf", 1),
        (0, "x", ("1",), "extra.conf", 3),
        (0, "y", ("2",), "extra.conf", 4),
        (0, "last", (), "nginx.conf", 3),
    ]
    assert tree[1].file == str(tmp_path / "extra.conf")


def test_include_inside_blocks(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", """\
http {
    include mime.types;
    map $jwt_claim_sub $jwt_status {
        include revoked/*.map;
        default 1;
    }
    server { location / { include loc.conf; } }
}
""")
    write(tmp_path / "mime.types", "types { application/json json; }\n")
    write(tmp_path / "revoked" / "a.map", '"quotes" 0;\n')
    write(tmp_path / "revoked" / "b.map", '"test" 0;\n')
    write(tmp_path / "loc.conf", "proxy_pass http://api;\n")
    assert flat(load(str(main))) == [
        (0, "http", (), "nginx.conf", 1),
        (1, "types", (), "mime.types", 1),
        (2, "application/json", ("json",), "mime.types", 1),
        (1, "map", ("$jwt_claim_sub", "$jwt_status"), "nginx.conf", 3),
        (2, "quotes", ("0",), "a.map", 1),
        (2, "test", ("0",), "b.map", 1),
        (2, "default", ("1",), "nginx.conf", 5),
        (1, "server", (), "nginx.conf", 7),
        (2, "location", ("/",), "nginx.conf", 7),
        (3, "proxy_pass", ("http://api",), "loc.conf", 1),
    ]


def test_glob_sorted_bytewise(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "include conf.d/*.conf;\n")
    for name in ["b.conf", "a.conf", "10.conf", "9.conf", "B.conf", "_.conf"]:
        write(tmp_path / "conf.d" / name, f"from {name};\n")
    write(tmp_path / "conf.d" / "skip.txt", "not included;\n")
    write(tmp_path / "conf.d" / ".hidden.conf", "not included;\n")
    assert [d.args[0] for d in load(str(main))] == ["10.conf", "9.conf", "B.conf", "_.conf", "a.conf", "b.conf"]


@pytest.mark.parametrize("pattern", ["none/*.conf", "x?.conf", "[ab].conf", "/nonexistent-dir-jwtgate/*"])
def test_glob_matching_nothing_is_empty(tmp_path: Path, pattern: str) -> None:
    main = write(tmp_path / "nginx.conf", f"a;\ninclude {pattern};\nb;\n")
    assert [d.name for d in load(str(main))] == ["a", "b"]


def test_relative_to_main_config_directory_at_any_depth(tmp_path: Path) -> None:
    # NGINX resolves every relative include against the conf prefix, not the including file.
    main = write(tmp_path / "etc" / "nginx.conf", "include sites/site.conf;\n")
    write(tmp_path / "etc" / "sites" / "site.conf", "include snippets/s.conf;\n")
    write(tmp_path / "etc" / "snippets" / "s.conf", "deep;\n")
    write(tmp_path / "etc" / "sites" / "snippets" / "s.conf", "wrong;\n")
    tree = load(str(main))
    assert [d.name for d in tree] == ["deep"]
    assert tree[0].file == str(tmp_path / "etc" / "snippets" / "s.conf")


def test_relative_main_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "conf" / "nginx.conf", "include inc.conf;\nmain;\n")
    write(tmp_path / "conf" / "inc.conf", "inc;\n")
    monkeypatch.chdir(tmp_path)
    tree = load("conf/nginx.conf")
    assert [(d.name, d.file) for d in tree] == [("inc", str(tmp_path / "conf" / "inc.conf")), ("main", "conf/nginx.conf")]


def test_absolute_include(tmp_path: Path) -> None:
    other = write(tmp_path / "elsewhere" / "abs.conf", "abs;\n")
    main = write(tmp_path / "etc" / "nginx.conf", f'include "{other}";\n')
    assert [d.name for d in load(str(main))] == ["abs"]


def test_same_file_twice_is_not_a_cycle(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "include x.conf;\nserver { include x.conf; }\n")
    write(tmp_path / "x.conf", "x;\n")
    assert flat(load(str(main))) == [
        (0, "x", (), "x.conf", 1), (0, "server", (), "nginx.conf", 2), (1, "x", (), "x.conf", 1)
    ]


# -- errors ---------------------------------------------------------------------------

def test_missing_plain_include(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "a;\n\ninclude missing.conf;\n")
    missing = tmp_path / "missing.conf"
    assert load_error(main) == (f'open() "{missing}" failed (2: No such file or directory)', str(main), 3)
    assert str(pytest.raises(ConfigError, load, str(main)).value) == (
        f'open() "{missing}" failed (2: No such file or directory) in {main}:3'
    )


def test_missing_include_from_included_file(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "include a.conf;\n")
    a = write(tmp_path / "a.conf", "x;\ninclude b.conf;\n")
    assert load_error(main) == (f'open() "{tmp_path / "b.conf"}" failed (2: No such file or directory)', str(a), 2)


def test_missing_main_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.conf"
    assert load_error(path) == (f'open() "{path}" failed (2: No such file or directory)', None, None)


def test_directory_as_include(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    main = write(tmp_path / "nginx.conf", "include d;\n")
    assert load_error(main) == (f'open() "{tmp_path / "d"}" failed (21: Is a directory)', str(main), 1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_unreadable_include(tmp_path: Path) -> None:
    secret = write(tmp_path / "secret.conf", "x;\n")
    secret.chmod(0)
    main = write(tmp_path / "nginx.conf", "include secret.conf;\n")
    assert load_error(main) == (f'open() "{secret}" failed (13: Permission denied)', str(main), 1)


@pytest.mark.parametrize("text", ["include;\n", "include a b;\n"])
def test_include_argument_count(tmp_path: Path, text: str) -> None:
    main = write(tmp_path / "nginx.conf", "http {\n" + text + "}\n")
    assert load_error(main) == ('invalid number of arguments in "include" directive', str(main), 2)


def test_include_with_block(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "include a.conf { }\n")
    assert load_error(main) == ('directive "include" is not terminated by ";"', str(main), 1)


def test_self_include_cycle(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "a;\ninclude nginx.conf;\n")
    assert load_error(main) == (f'include cycle: "{main}" -> "{main}"', str(main), 2)


def test_glob_including_the_main_file_is_a_cycle(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "http {\n    include *.conf;\n}\n")
    write(tmp_path / "a.conf", "a;\n")
    assert load_error(main) == (f'include cycle: "{main}" -> "{main}"', str(main), 2)


def test_indirect_cycle(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "include a.conf;\n")
    a = write(tmp_path / "a.conf", "include b.conf;\n")
    b = write(tmp_path / "b.conf", "x;\n\ninclude a.conf;\n")
    assert load_error(main) == (f'include cycle: "{a}" -> "{b}" -> "{a}"', str(b), 3)


def test_cycle_through_symlink(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "include a.conf;\n")
    a = write(tmp_path / "a.conf", "include link.conf;\n")
    (tmp_path / "link.conf").symlink_to(a)
    assert load_error(main)[0] == f'include cycle: "{a}" -> "{tmp_path / "link.conf"}"'


def test_depth_limit(tmp_path: Path) -> None:
    def chain(n: int) -> Path:
        d = tmp_path / str(n)
        for i in range(n):
            write(d / f"{i}.conf", f"include {i + 1}.conf;\n")
        write(d / f"{n}.conf", "bottom;\n")
        return d / "0.conf"

    assert [d.name for d in load(str(chain(MAX_INCLUDE_DEPTH)))] == ["bottom"]
    main = chain(MAX_INCLUDE_DEPTH + 1)
    message, file, line = load_error(main)
    assert message == f"include nesting too deep (more than {MAX_INCLUDE_DEPTH} levels)"
    assert file == str(main.parent / f"{MAX_INCLUDE_DEPTH}.conf") and line == 1


def test_parse_error_in_included_file_is_located_there(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "http {\n include bad.conf;\n}\n")
    bad = write(tmp_path / "bad.conf", "ok;\n\nbroken }\n")
    assert load_error(main) == ('unexpected "}"', str(bad), 3)


def test_unbalanced_braces_do_not_cross_files(tmp_path: Path) -> None:
    # Each file is a complete unit, as in NGINX: a block cannot be opened in one and closed in another.
    main = write(tmp_path / "nginx.conf", "include open.conf;\n}\n")
    opened = write(tmp_path / "open.conf", "http {\n")
    assert load_error(main) == ('unexpected end of file, expecting "}"', str(opened), 2)


def test_invalid_utf8(tmp_path: Path) -> None:
    main = tmp_path / "nginx.conf"
    main.write_bytes(b"a;\nb \xff;\n")
    assert load_error(main) == ("invalid UTF-8 byte 0xff", str(main), 2)


def test_too_large(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "include big.conf;\n")
    big = tmp_path / "big.conf"
    with open(big, "wb") as f:
        f.truncate(MAX_CONFIG_SIZE + 1)
    assert load_error(main) == (
        f'configuration file "{big}" is too large ({MAX_CONFIG_SIZE + 1} bytes, the limit is {MAX_CONFIG_SIZE})',
        str(main), 1)


def test_exactly_max_size_is_read(tmp_path: Path) -> None:
    main = tmp_path / "nginx.conf"
    main.write_bytes(b"a;" + b" " * (MAX_CONFIG_SIZE - 2))
    assert [d.name for d in load(str(main))] == ["a"]


# -- dump -------------------------------------------------------------------------------

def test_dump_like_nginx_T(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "http {\n    include conf.d/*.conf;\n}\ninclude conf.d/a.conf;\n")
    a = write(tmp_path / "conf.d" / "a.conf", "# a\nserver { listen 80; }\n")
    b = write(tmp_path / "conf.d" / "b.conf", "include c.inc;")  # no final newline
    c = write(tmp_path / "c.inc", "c;\n")
    assert dump(str(main)) == (
        f"# configuration file {main}:\n"
        "http {\n    include conf.d/*.conf;\n}\ninclude conf.d/a.conf;\n\n"
        f"# configuration file {a}:\n"
        "# a\nserver { listen 80; }\n\n"
        f"# configuration file {b}:\n"
        "include c.inc;\n"
        f"# configuration file {c}:\n"
        "c;\n\n"
    )


def test_dump_of_invalid_configuration_raises(tmp_path: Path) -> None:
    main = write(tmp_path / "nginx.conf", "include nope.conf;\n")
    with pytest.raises(ConfigError):
        dump(str(main))


def test_errors_are_reported_in_nginx_order(tmp_path: Path) -> None:
    # NGINX includes a file when it reads the include: an error in it comes before any
    # later error in the including file.
    main = write(tmp_path / "nginx.conf", "include bad.conf;\n;\n")
    bad = write(tmp_path / "bad.conf", "x\n")
    assert load_error(main) == ('unexpected end of file, expecting ";" or "}"', str(bad), 2)
    write(tmp_path / "nginx.conf", "http {\n  include missing.conf;\n}\n}\n")
    assert load_error(main)[0].startswith('open() "')
    write(tmp_path / "nginx.conf", ";\ninclude missing.conf;\n")
    assert load_error(main) == ('unexpected ";"', str(main), 1)


def test_relative_include_falls_back_to_the_including_files_directory(tmp_path):
    # sub/a.conf includes "b.conf", which exists only next to it (not under the conf prefix).
    (tmp_path / "sub").mkdir()
    (tmp_path / "main.conf").write_text("include sub/a.conf;\n")
    (tmp_path / "sub" / "a.conf").write_text("include b.conf;\n")
    (tmp_path / "sub" / "b.conf").write_text("from_b on;\n")
    names = [d.name for d in load(str(tmp_path / "main.conf"))]
    assert names == ["from_b"]


def test_conf_prefix_wins_over_the_including_files_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "main.conf").write_text("include sub/a.conf;\n")
    (tmp_path / "sub" / "a.conf").write_text("include b.conf;\n")
    (tmp_path / "sub" / "b.conf").write_text("local on;\n")
    (tmp_path / "b.conf").write_text("prefix on;\n")
    assert [d.name for d in load(str(tmp_path / "main.conf"))] == ["prefix"]
