//! `validate` reports problems with the right file and line.

mod common;

use meshgate_governance::{Problem, Sources, validate};

/// Problems as `file:line: message`, and asserts one matches.
fn expect(problems: &[Problem], file: &str, line: u32, needle: &str) {
    assert!(
        problems
            .iter()
            .any(|p| p.file == file && p.line == line && p.message.contains(needle)),
        "no problem {file}:{line} containing {needle:?} in:\n{}",
        problems
            .iter()
            .map(|p| format!("  {p}\n"))
            .collect::<String>()
    );
}

#[test]
fn fixtures_are_valid() {
    for dir in ["specmesh", "asyncapi26", "asyncapi30", "mesh"] {
        assert_eq!(
            validate(&common::sources(dir)),
            Vec::<Problem>::new(),
            "{dir}"
        );
    }
}

#[test]
fn problems_point_at_their_line() {
    let mut s = Sources::new();
    s.insert(
        "broken.yaml",
        "asyncapi: '2.5.0'\nid: urn:acme.broken\nchannels: [\n",
    );
    s.insert("noid.yaml", "asyncapi: '2.5.0'\ninfo:\n  title: x\n");
    s.insert("badid.yaml", "asyncapi: '2.5.0'\n\nid: 'urn:acme..bad'\n");
    s.insert(
        "old.yaml",
        "# comment\nasyncapi: '1.2.0'\nid: urn:acme.old\n",
    );
    s.insert(
        "dialect.yaml",
        "asyncapi: '2.6.0'\nx-dialect: kafka\nid: urn:acme.d\n",
    );
    s.insert(
        "acme.a.yaml",
        "asyncapi: '2.5.0'
id: urn:acme.a
channels:
  _public.ok:
    publish: {}
  _public.bad name:
    publish: {}
  _protected.granted:
    publish:
      tags:
        - name: grant-access:fine.app
        - name: 'grant-access:not/an/app'
  _public.old:
    x-deprecated:
      eol: 31/12/2030
  _public.missing_schema:
    publish:
      message:
        payload:
          $ref: schema/none.avsc
  _public.broken_schema:
    publish:
      message:
        payload:
          $ref: schema/broken.avsc
  _public.bad_json_schema:
    publish:
      message:
        payload:
          type: 12
  _public.orders/{region}:
    parameters:
      region:
        location: somewhere
      extra: {}
  sales._public.stolen:
    publish: {}
",
    );
    s.insert("schema/broken.avsc", "{\"type\": \"record\", \"name\": \"X\", \"fields\": [{\"name\": \"a\", \"type\": \"nope\"}]}");
    s.insert(
        "acme.a.sales.yaml",
        "asyncapi: '2.5.0'\nid: urn:acme.a.sales\nchannels:\n  _public.mine:\n    publish: {}\n",
    );
    s.insert(
        "acme.a.more.json",
        "{\n  \"asyncapi\": \"2.5.0\",\n  \"id\": \"urn:acme.a\",\n  \"channels\": {\n    \"_public.ok\": {}\n  }\n}\n",
    );
    let problems = validate(&s);

    expect(&problems, "broken.yaml", 4, "syntax error");
    expect(&problems, "noid.yaml", 1, "missing `id");
    expect(&problems, "badid.yaml", 3, "invalid app id");
    expect(&problems, "old.yaml", 2, "unknown dialect");
    expect(&problems, "dialect.yaml", 2, "unknown dialect");
    expect(
        &problems,
        "acme.a.yaml",
        6,
        "invalid name segment \"bad name\"",
    );
    expect(&problems, "acme.a.yaml", 12, "grant to a malformed app id");
    expect(&problems, "acme.a.yaml", 15, "invalid EOL date");
    expect(
        &problems,
        "acme.a.yaml",
        20,
        "schema file \"schema/none.avsc\" not found",
    );
    expect(&problems, "acme.a.yaml", 25, "invalid Avro schema");
    expect(&problems, "acme.a.yaml", 29, "invalid JSON Schema");
    expect(&problems, "acme.a.yaml", 34, "invalid parameter location");
    expect(
        &problems,
        "acme.a.yaml",
        35,
        "parameter \"extra\" is not used",
    );
    expect(
        &problems,
        "acme.a.yaml",
        36,
        "in the namespace of app acme.a.sales",
    );
    // Files are read in path order: the JSON file defined the channel first.
    expect(
        &problems,
        "acme.a.yaml",
        4,
        "already defined at acme.a.more.json:5",
    );
    // Nothing else: the good parts of the files produced no problem.
    assert_eq!(problems.len(), 15, "{problems:#?}");
}

#[test]
fn a_partial_catalog_keeps_the_good_channels() {
    let mut s = Sources::new();
    s.insert(
        "a.yaml",
        "asyncapi: '2.5.0'\nid: urn:acme.a\nchannels:\n  _public.ok:\n    publish: {}\n  _public.x/y:\n    publish: {}\n",
    );
    let (catalog, problems) = meshgate_governance::Catalog::build(&s, 7);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].line, 6);
    assert_eq!(
        problems[0].to_string(),
        format!("a.yaml:6: {}", problems[0].message)
    );
    assert_eq!(catalog.version(), 7);
    assert_eq!(catalog.channels().len(), 1);
}
