"""The one map (一张图): vector layers registered in the data hub's catalog, spatial storage on
SQLite (WKB + R*Tree) and PostGIS behind one adapter, and spatial services for other engines."""
