<?php
// Echoes the request back (tests/tests/apps.rs, the PHP-FPM test): method, URI, query and form
// fields, a request header, the body's length and SHA-1. Nothing that differs between runs.
$body = file_get_contents('php://input');
header('Content-Type: text/plain');
header('X-Echo: yes');
echo "method ", $_SERVER['REQUEST_METHOD'], "\n";
echo "uri ", $_SERVER['REQUEST_URI'], "\n";
echo "query ", json_encode($_GET), "\n";
echo "form ", json_encode($_POST), "\n";
echo "content-type ", $_SERVER['CONTENT_TYPE'] ?? '', "\n";
echo "x-test ", $_SERVER['HTTP_X_TEST'] ?? '', "\n";
echo "body ", strlen($body), " ", sha1($body), "\n";
