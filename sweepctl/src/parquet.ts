/**
 * `results --format parquet`: the same records as the CSV/JSON-lines export (provenance columns
 * included) as an Apache Parquet file, written with hyparquet-writer (pure JavaScript, MIT). A
 * column whose every value is a number (or empty) is DOUBLE, or INT64 when all are integers;
 * any other column is a UTF-8 STRING; empty values are nulls. The rows are held in memory until
 * the file is written (about 200 bytes a row).
 */
import { parquetWriteFile } from "hyparquet-writer";
import type { ColumnSource } from "hyparquet-writer";

type Value = string | number | boolean | null | undefined;

/** Writes records (all with the same keys, in order) to a Parquet file; returns the row count. */
export async function writeParquet(records: AsyncIterable<Record<string, Value>> | Iterable<Record<string, Value>>, file: string): Promise<number> {
  const columns = new Map<string, Value[]>();
  let n = 0;
  for await (const r of records) {
    for (const [k, v] of Object.entries(r)) {
      let col = columns.get(k);
      if (!col) columns.set(k, (col = Array<Value>(n).fill(null))); // a key first seen later: null before
      col.push(v);
    }
    n++;
    for (const col of columns.values()) if (col.length < n) col.push(null);
  }
  const columnData: ColumnSource[] = [...columns].map(([name, values]) => column(name, values));
  parquetWriteFile({ filename: file, columnData });
  return n;
}

const empty = (v: Value): boolean => v === null || v === undefined || v === "" || (typeof v === "number" && Number.isNaN(v));

function column(name: string, values: Value[]): ColumnSource {
  const present = values.filter((v) => !empty(v));
  if (present.length > 0 && present.every((v) => typeof v === "number")) {
    const ints = present.every((v) => Number.isSafeInteger(v));
    const data = values.map((v) => (empty(v) ? null : ints ? BigInt(v as number) : (v as number)));
    return { name, data, type: ints ? "INT64" : "DOUBLE", nullable: true };
  }
  return { name, data: values.map((v) => (empty(v) ? null : String(v))), type: "STRING", nullable: true };
}
