"""The fixed parts of the HTML report page (``_html.py``): its style sheet, its one script (sorting the layer
table; the web page allows it by its hash) and the page template. Kept apart so the renderer reads as code."""

from __future__ import annotations

__all__ = ["CSS", "PAGE", "REPORT_SCRIPT"]

CSS = """
:root{--fg:#1f2328;--muted:#57606a;--line:#d0d7de;--bg:#fff;--accent:#1f6feb}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1180px;margin:0 auto;padding:16px}
h1{font-size:1.45rem;margin:.2rem 0;word-break:break-all}
h2{font-size:1.1rem;margin:1.2rem 0 .5rem}
.meta{color:var(--muted);margin:.2rem 0}
.verdict{font-size:1.05rem;font-weight:600;padding:.6rem .8rem;border-left:4px solid var(--accent);background:#f6f8fa}
.verdict.warn{border-left-color:#d4a72c}
.warnings{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.3rem 1rem;margin:1rem 0}
.warnings h2{margin:.4rem 0;color:#7d4e00}
.warnings li{margin:.25rem 0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(165px,1fr));gap:10px;margin:1rem 0}
.card{border:1px solid var(--line);border-radius:6px;padding:.55rem .75rem}
.card .k{color:var(--muted);font-size:.85rem}.card .v{font-size:1.35rem;font-weight:650}
.card .s{color:var(--muted);font-size:.8rem}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,520px),1fr));gap:14px;align-items:start}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:.6rem;break-inside:avoid;min-width:0}
figcaption{font-weight:600;margin-bottom:.3rem}
svg.chart{width:100%;height:auto;display:block}
.note{color:var(--muted);font-size:.82rem;margin:.3rem 0}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.85rem;width:100%}
th,td{padding:.3rem .45rem;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#f6f8fa;cursor:pointer;user-select:none;position:sticky;top:0}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
td.col-name,td.col-reason,th.text{text-align:left}
td.col-reason{white-space:normal;min-width:16rem;max-width:28rem}
td.col-name{font-family:ui-monospace,monospace;font-size:.8rem}
tr.skipped td{color:var(--muted)}
table.kv{width:auto}table.kv th{cursor:default;text-align:left;position:static}
table.kv td{text-align:left;white-space:normal;overflow-wrap:anywhere}
details{margin:.5rem 0}summary{font-weight:600;cursor:pointer}
@media (max-width:600px){main{padding:10px}h1{font-size:1.2rem}.verdict{font-size:.95rem}}
@media print{main{max-width:none;padding:0}th{position:static}.scroll{overflow:visible}
 figure,section.cards,.warnings{break-inside:avoid}body{font-size:10pt}.charts{grid-template-columns:1fr 1fr}
 table{font-size:7pt}th,td{padding:.12rem .2rem}td.col-reason{white-space:normal;min-width:0}
 td.col-name{white-space:normal;overflow-wrap:anywhere;min-width:9rem;font-size:7pt}
 th[aria-sort]::after{content:""}
 .col-op,.col-groups,.col-macs_before,.col-macs_after{display:none}}
"""

#: The one inline script of every report page (sorting the layer table); the web page allows it by its hash.
REPORT_SCRIPT = """
(function(){
  var table=document.getElementById('layer-table');if(!table)return;
  var heads=table.tHead.rows[0].cells;
  function sortBy(i){
    var th=heads[i],asc=th.getAttribute('aria-sort')!=='ascending',num=th.dataset.type==='num';
    var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=a.cells[i].dataset.v,y=b.cells[i].dataset.v,r;
      if(num){
        if(x===''||y==='')return (x==='')-(y==='');  // unknown values last, either way
        r=(+x)-(+y);if(!asc)r=-r;}
      else{r=x.localeCompare(y,undefined,{numeric:true});if(!asc)r=-r;}
      return r;});
    rows.forEach(function(r){body.appendChild(r);});
    for(var j=0;j<heads.length;j++)heads[j].removeAttribute('aria-sort');
    th.setAttribute('aria-sort',asc?'ascending':'descending');
  }
  for(var i=0;i<heads.length;i++)(function(i){
    heads[i].addEventListener('click',function(){sortBy(i);});
    heads[i].addEventListener('keydown',function(e){if(e.key==='Enter'||e.key===' '){e.preventDefault();sortBy(i);}});
  })(i);
})();
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="sepconv">
<title>{title}</title>
<style>{css}</style></head>
<body><main>
{body}
</main><script>{js}</script></body></html>
"""
